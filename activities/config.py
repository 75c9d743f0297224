"""Worker configuration from the environment."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import timedelta
from typing import Mapping

from workflows.models import JourneySettings

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> timedelta:
    """'90' (seconds), '500ms', '30s', '15m', '24h', '3d'."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 24h or 3d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])


def journey_settings_from_env(env: Mapping[str, str]) -> JourneySettings:
    """JOURNEY_<FIELD> overrides each default, e.g. JOURNEY_FEEDBACK_DELAY=20s."""
    overrides = {}
    for field in JourneySettings.model_fields:
        value = env.get(f"JOURNEY_{field.upper()}")
        if value:
            overrides[field] = parse_duration(value)
    return JourneySettings(**overrides)


@dataclass(frozen=True)
class ProviderConfig:
    sendgrid_api_key: str | None = None
    sendgrid_api_host: str = "https://api.sendgrid.com"
    email_from: str = "orders@example.com"
    email_from_name: str | None = None
    twilio_account_sid: str | None = None
    twilio_auth_token: str | None = None
    twilio_api_base_url: str = "https://api.twilio.com"
    twilio_from_number: str | None = None
    request_timeout: float = 10.0
    # Threads for the blocking provider clients: as many sends at once.
    provider_threads: int = 32

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProviderConfig:
        defaults = cls()
        return cls(
            sendgrid_api_key=env.get("SENDGRID_API_KEY") or None,
            sendgrid_api_host=env.get("SENDGRID_API_HOST") or defaults.sendgrid_api_host,
            email_from=env.get("EMAIL_FROM") or defaults.email_from,
            email_from_name=env.get("EMAIL_FROM_NAME") or None,
            twilio_account_sid=env.get("TWILIO_ACCOUNT_SID") or None,
            twilio_auth_token=env.get("TWILIO_AUTH_TOKEN") or None,
            twilio_api_base_url=env.get("TWILIO_API_BASE_URL") or defaults.twilio_api_base_url,
            twilio_from_number=env.get("TWILIO_FROM_NUMBER") or None,
            request_timeout=float(env.get("PROVIDER_TIMEOUT_SECONDS") or defaults.request_timeout),
            provider_threads=int(env.get("PROVIDER_THREADS") or defaults.provider_threads),
        )

    @property
    def email_configured(self) -> bool:
        return bool(self.sendgrid_api_key)

    @property
    def sms_configured(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token and self.twilio_from_number)
