"""The HTTP service's configuration, from the environment."""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Callable, Mapping

from codec import KEY_VARIABLES, CodecConfigError, payload_keys_from_env
from worker import metrics_address
from workflows.clock import parse_duration

DEFAULT_METRICS_PORT = 9465
DEFAULT_HELP_TEXT = "Order updates by SMS. Reply STOP to stop all messages, START to receive them again."


class ConfigError(ValueError):
    """A missing or malformed setting: printed without a traceback."""


@dataclass(frozen=True)
class WebConfig:
    # Secrets stay out of repr: a logged config must not leak them.
    unsubscribe_secret: str = field(repr=False)
    database_url: str | None = field(default=None, repr=False)
    host: str = "127.0.0.1"
    port: int = 8000
    # What Twilio signs and unsubscribe links start with: behind a proxy the
    # Host header is not the address the outside world used.
    public_url: str = "http://localhost:8000"
    # Without it the SMS webhook answers 503 rather than accept unsigned posts.
    twilio_auth_token: str | None = field(default=None, repr=False)
    # With the auth token, the account whose SMS statuses are looked up when
    # Twilio's callback did not come (web/sms_statuses.py); without, none are.
    twilio_account_sid: str | None = None
    twilio_api_base_url: str = "https://api.twilio.com"
    # A status callback comes seconds after the status changes, nearly every
    # final one within minutes: one not come by then was lost.
    twilio_status_lookup_after: timedelta = timedelta(minutes=15)
    provider_timeout: float = 10.0
    sms_help_text: str = DEFAULT_HELP_TEXT
    max_body_bytes: int = 64 * 1024
    # SendGrid's Event Webhook verification key (base64 DER, as its settings
    # show it). Without it the endpoint answers 503 rather than accept
    # unsigned posts.
    sendgrid_webhook_public_key: str | None = None
    # A signed post older (or newer) than this is a replay: refused.
    sendgrid_webhook_tolerance: timedelta = timedelta(minutes=5)
    # SendGrid posts events in batches of up to 768 KB.
    sendgrid_webhook_max_body_bytes: int = 1024 * 1024
    # The bearer token of POST /erasures and GET /erasures/{receipt}
    # (web/erasures.py); without it they answer 503.
    erasure_api_token: str | None = field(default=None, repr=False)
    # TEMPORAL_* and the payload keys for worker.connect_temporal, used on the first signal.
    temporal_env: Mapping[str, str] = field(default_factory=dict, repr=False)
    # Where `orders web` serves Prometheus metrics (METRICS_HOST:WEB_METRICS_PORT),
    # apart from the public port; None: nowhere.
    metrics_address: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] = os.environ) -> WebConfig:
        secret = env.get("UNSUBSCRIBE_SECRET")
        if not secret:
            raise ConfigError(
                "UNSUBSCRIBE_SECRET is required: the key unsubscribe links are signed with, "
                "the same for the worker and the HTTP service (e.g. `openssl rand -hex 32`)"
            )
        try:  # checked now, though used only at the first signal: a service that cannot signal must not start
            payload_keys_from_env(env)
        except CodecConfigError as err:
            raise ConfigError(str(err)) from None
        port = _int(env, "WEB_PORT", cls.port)
        return cls(
            unsubscribe_secret=secret,
            database_url=env.get("DATABASE_URL") or None,
            host=env.get("WEB_HOST") or cls.host,
            port=port,
            public_url=(env.get("WEB_PUBLIC_URL") or f"http://localhost:{port}").rstrip("/"),
            twilio_auth_token=env.get("TWILIO_AUTH_TOKEN") or None,
            twilio_account_sid=env.get("TWILIO_ACCOUNT_SID") or None,
            twilio_api_base_url=env.get("TWILIO_API_BASE_URL") or cls.twilio_api_base_url,
            twilio_status_lookup_after=_duration(env, "TWILIO_STATUS_LOOKUP_AFTER", cls.twilio_status_lookup_after),
            provider_timeout=_number(env, "PROVIDER_TIMEOUT_SECONDS", cls.provider_timeout),
            sms_help_text=env.get("SMS_HELP_TEXT") or DEFAULT_HELP_TEXT,
            max_body_bytes=_int(env, "WEB_MAX_BODY_BYTES", cls.max_body_bytes),
            sendgrid_webhook_public_key=env.get("SENDGRID_WEBHOOK_PUBLIC_KEY") or None,
            sendgrid_webhook_tolerance=_duration(env, "SENDGRID_WEBHOOK_TOLERANCE", cls.sendgrid_webhook_tolerance),
            sendgrid_webhook_max_body_bytes=_int(
                env, "SENDGRID_WEBHOOK_MAX_BODY_BYTES", cls.sendgrid_webhook_max_body_bytes
            ),
            erasure_api_token=env.get("ERASURE_API_TOKEN") or None,
            temporal_env={k: v for k, v in env.items() if k.startswith("TEMPORAL_") or k in KEY_VARIABLES},
            metrics_address=metrics_address(env, "WEB_METRICS_PORT", DEFAULT_METRICS_PORT),
        )


def _int(env: Mapping[str, str], name: str, default: int) -> int:
    try:
        return int(env.get(name) or default)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number") from None


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    try:
        value = float(env.get(name) or default)
    except ValueError:
        value = 0.0
    if value <= 0:
        raise ConfigError(f"{name} must be a number of seconds above 0")
    return value


def _duration(env: Mapping[str, str], name: str, default: timedelta) -> timedelta:
    try:
        return parse_duration(env[name]) if env.get(name) else default
    except ValueError as err:
        raise ConfigError(f"{name}: {err}") from None


def local_secret(path: Path, new: Callable[[], str] = lambda: secrets.token_urlsafe(32)) -> str:
    """The secret in `path`, made by `new` on first use and readable by this
    user only, so what depends on it survives a restart of `orders up` (the
    links in mails already sent, the dev server's encrypted histories)."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        secret = new()
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            file.write(secret)
        return secret
