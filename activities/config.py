"""The worker's configuration from the environment: its providers and how
it sends (ProviderConfig), and the journey and lifecycle settings each
workflow captures when it starts."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Mapping
from urllib.parse import urlsplit

from workflows.clock import parse_duration
from workflows.models import CaseRouting, CouponTerms, JourneySettings, LifecycleSettings

# JourneySettings.report_window has no default of its own: orders recorded
# before it existed have none.
DEFAULT_REPORT_WINDOW = timedelta(days=3)


def journey_settings_from_env(env: Mapping[str, str]) -> JourneySettings:
    """JOURNEY_<FIELD> overrides each default, e.g. JOURNEY_FEEDBACK_DELAY=20s."""
    overrides = {"report_window": DEFAULT_REPORT_WINDOW}
    for field in JourneySettings.model_fields:
        value = env.get(f"JOURNEY_{field.upper()}")
        if value:
            overrides[field] = parse_duration(value)
    return JourneySettings(**overrides)


def parse_coupon(text: str) -> CouponTerms:
    """'15%' or 'free_shipping', optionally '/30d' for how long it is valid."""
    offer, _, valid = text.partition("/")
    offer = offer.strip().lower()
    terms: dict = {"valid_for": parse_duration(valid)} if valid else {}
    if offer == "free_shipping":
        return CouponTerms(free_shipping=True, **terms)
    if offer.endswith("%") and offer[:-1].isdigit():
        return CouponTerms(discount_percent=int(offer[:-1]), **terms)
    raise ValueError(f"{text!r} is not a coupon like 15%, free_shipping or 10%/30d")


def lifecycle_settings_from_env(env: Mapping[str, str], journey: JourneySettings) -> LifecycleSettings:
    """LIFECYCLE_<FIELD> overrides each default, e.g. LIFECYCLE_LAPSE_AFTER=90d,
    LIFECYCLE_HOLDOUT_SHARE=0.1, LIFECYCLE_WIN_BACK_COUPON=free_shipping/30d.
    SMS quiet hours are the journey's (JOURNEY_SMS_QUIET_FROM/UNTIL)."""
    values: dict = {"sms_quiet_from": journey.sms_quiet_from, "sms_quiet_until": journey.sms_quiet_until}
    for name, field in LifecycleSettings.model_fields.items():
        value = env.get(f"LIFECYCLE_{name.upper()}")
        if not value or name.startswith("sms_quiet"):
            continue
        if field.annotation is timedelta:
            values[name] = parse_duration(value)
        elif field.annotation is CouponTerms:
            values[name] = parse_coupon(value)
        else:
            values[name] = value  # numbers: pydantic checks them
    return LifecycleSettings(**values)


def _pairs(name: str, text: str) -> dict[str, str]:
    pairs = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, owner = part.partition("=")
        if not sep or not key.strip() or not owner.strip():
            raise ValueError(f"{name}: {part!r} is not KEY=OWNER (e.g. S1=gadgets-team@shop.example)")
        pairs[key.strip()] = owner.strip()
    return pairs


def case_routing_from_env(env: Mapping[str, str]) -> CaseRouting:
    """Who owns a case (CASE_OWNERS_BY_SELLER, CASE_OWNERS_BY_CATEGORY:
    `key=owner,...`; CASE_DEFAULT_OWNER), who it escalates to
    (CASE_ESCALATION: `team-lead,next-level,...`) and when (CASE_SLA,
    CASE_RESOLVE_WITHIN, CASE_REMIND_EVERY, CASE_REOPEN_WINDOW: durations)."""
    values: dict = {}
    for name, field in (("CASE_OWNERS_BY_SELLER", "by_seller"), ("CASE_OWNERS_BY_CATEGORY", "by_category")):
        if env.get(name):
            values[field] = _pairs(name, env[name])
    if env.get("CASE_DEFAULT_OWNER"):
        values["default_owner"] = env["CASE_DEFAULT_OWNER"].strip()
    if env.get("CASE_ESCALATION"):
        values["escalation"] = [level.strip() for level in env["CASE_ESCALATION"].split(",") if level.strip()]
    for field in ("sla", "resolve_within", "remind_every", "reopen_window"):
        value = env.get(f"CASE_{field.upper()}")
        if value:
            values[field] = parse_duration(value)
    return CaseRouting(**values)


def _is_local(url: str) -> bool:
    host = urlsplit(url).hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    # 0.0.0.0 and :: are no address anyone else could reach either.
    return address.is_loopback or address.is_unspecified


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
    # A mail whose request may have reached SendGrid without an answer is
    # looked up in its Email Activity this long after, and sent if it is not
    # there: long enough for a mail SendGrid took to show there.
    sendgrid_settle_after: timedelta = timedelta(minutes=10)
    # Provider requests in flight at once per worker (PROVIDER_THREADS: the
    # name is from when each request had a thread of its own).
    provider_threads: int = 32
    # At most this many marketing messages per customer (all channels) in any
    # window of this length; one more is deferred until a slot frees.
    marketing_cap: int = 2
    marketing_cap_window: timedelta = timedelta(days=7)
    # Unsubscribe links in marketing email (RFC 8058): the web service's
    # public address, the HMAC key of the tokens (no marketing email is sent
    # without it), and the mailto alternative (default unsubscribe@ the
    # domain of EMAIL_FROM).
    web_public_url: str = "http://localhost:8000"
    unsubscribe_secret: str | None = field(default=None, repr=False)
    unsubscribe_mailto: str | None = None

    def __post_init__(self) -> None:
        if self.marketing_cap < 1:
            raise ValueError("MARKETING_CAP must be at least 1")
        if self.marketing_cap_window <= timedelta(0):
            raise ValueError("MARKETING_CAP_WINDOW must be longer than zero")
        if self.sendgrid_settle_after <= timedelta(0):
            raise ValueError("SENDGRID_SETTLE_AFTER must be longer than zero")
        # Providers on loopback are a local stand-in, and the service is local too.
        calls_back = self.sms_configured and not _is_local(self.twilio_api_base_url)
        links_out = self.email_configured and self.unsubscribe_secret and not _is_local(self.sendgrid_api_host)
        if (calls_back or links_out) and _is_local(self.web_public_url):
            raise ValueError(
                f"WEB_PUBLIC_URL {self.web_public_url} is a local address: Twilio's status callbacks and "
                "customers' unsubscribe links could not reach `orders web` there; set it to the service's public address"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> ProviderConfig:
        defaults = cls()
        window = env.get("MARKETING_CAP_WINDOW")
        settle_after = env.get("SENDGRID_SETTLE_AFTER")
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
            sendgrid_settle_after=parse_duration(settle_after) if settle_after else defaults.sendgrid_settle_after,
            provider_threads=int(env.get("PROVIDER_THREADS") or defaults.provider_threads),
            marketing_cap=int(env.get("MARKETING_CAP") or defaults.marketing_cap),
            marketing_cap_window=parse_duration(window) if window else defaults.marketing_cap_window,
            web_public_url=env.get("WEB_PUBLIC_URL") or defaults.web_public_url,
            unsubscribe_secret=env.get("UNSUBSCRIBE_SECRET") or None,
            unsubscribe_mailto=env.get("UNSUBSCRIBE_MAILTO") or None,
        )

    @property
    def unsubscribe_address(self) -> str:
        return self.unsubscribe_mailto or f"unsubscribe@{self.email_from.rpartition('@')[2]}"

    @property
    def email_configured(self) -> bool:
        return bool(self.sendgrid_api_key)

    @property
    def sms_configured(self) -> bool:
        return bool(self.twilio_account_sid and self.twilio_auth_token and self.twilio_from_number)
