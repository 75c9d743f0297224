"""Provider webhooks: their signature checks, and the two endpoints through
which providers report on messages they took (SendGrid's Event Webhook,
Twilio's status callbacks). Each event is written to PostgreSQL
(store/provider_events.py) and committed; only then is the order's
workflow told of a message that did not arrive, now or, while Temporal is
away, by the relay (web/signals.py).

Nothing here logs an address, a number, a reason or a secret.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import BackgroundTasks, Depends, FastAPI, Form, Header, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from sendgrid.helpers.eventwebhook import EventWebhook
from sendgrid.helpers.eventwebhook.eventwebhook_header import EventWebhookHeader
from starlette.datastructures import MultiDict
from temporalio.common import MetricMeter
from twilio.request_validator import RequestValidator

from providers.twilio import SMS_STATUS_CALLBACK_PATH
from store import provider_events
from web.config import ConfigError, WebConfig
from web.signals import OwedSignals

log = logging.getLogger(__name__)

SENDGRID_EVENTS_PATH = "/webhooks/sendgrid/events"

# Message statuses as the Twilio API specification lists them.
TwilioStatus = Literal[
    "queued", "sending", "sent", "failed", "delivered", "undelivered", "receiving", "received",
    "accepted", "scheduled", "read", "partially_delivered", "canceled",
]


SENDGRID_EVENT_ID_LENGTH = 128


class SendGridEvent(BaseModel):
    """One event of a SendGrid post, as far as it is read; custom args (our
    `message_key`) come as top-level fields, and the rest is ignored."""

    model_config = ConfigDict(extra="ignore")

    event: Annotated[str, Field(min_length=1, max_length=64)]
    sg_event_id: Annotated[str, Field(min_length=1, max_length=SENDGRID_EVENT_ID_LENGTH)]
    # Unix seconds, up to the year 9999.
    timestamp: Annotated[int, Field(ge=0, le=253_402_300_799)]
    sg_message_id: Annotated[str, Field(max_length=256)] | None = None
    message_key: Annotated[str, Field(max_length=512)] | None = None
    # bounce: 'bounce' (the address does not take mail) or 'blocked' (not now).
    type: Annotated[str, Field(max_length=64)] | None = None
    reason: str | None = None


# The post is read as a JSON array first, each event then on its own: one of
# a shape we do not expect must not refuse the others (SendGrid would post
# the whole batch again, and again, for 24 hours).
SENDGRID_POST = TypeAdapter(list[Any])
# What an unreadable event may show of its name: SendGrid's are plain words.
EVENT_NAME = re.compile(r"^[a-z_]{1,32}$")
UNREADABLE_EVENTS = "orders_web_unreadable_events"


def twilio_signature(config: WebConfig) -> Callable[..., Awaitable[None]]:
    """The dependency that refuses a post Twilio did not sign."""

    async def signed_by_twilio(
        request: Request, signature: Annotated[str | None, Header(alias="X-Twilio-Signature")] = None
    ) -> None:
        if not config.twilio_auth_token:
            raise HTTPException(503, "SMS webhook not configured: TWILIO_AUTH_TOKEN is not set")
        # What Twilio signed: the public URL it called, not the Host a proxy passed on.
        url = config.public_url + request.url.path + (f"?{request.url.query}" if request.url.query else "")
        form = await request.form()
        params = MultiDict([(k, v) for k, v in form.multi_items() if isinstance(v, str)])
        if not signature or not RequestValidator(config.twilio_auth_token).validate(url, params, signature):
            raise HTTPException(403, "missing or invalid X-Twilio-Signature")

    return signed_by_twilio


def sendgrid_signature(config: WebConfig) -> Callable[..., Awaitable[None]]:
    """The dependency that refuses a post SendGrid did not sign, or signed
    longer ago (or further ahead) than the tolerance: a replay."""
    verifier = None
    if config.sendgrid_webhook_public_key:
        try:
            verifier = EventWebhook(config.sendgrid_webhook_public_key)
        except ValueError:
            raise ConfigError(
                "SENDGRID_WEBHOOK_PUBLIC_KEY is not a public key: paste the verification key SendGrid shows "
                "for the Signed Event Webhook (base64, without the PEM lines)"
            ) from None
    tolerance = config.sendgrid_webhook_tolerance.total_seconds()

    async def signed_by_sendgrid(
        request: Request,
        signature: Annotated[str | None, Header(alias=EventWebhookHeader.SIGNATURE)] = None,
        timestamp: Annotated[str | None, Header(alias=EventWebhookHeader.TIMESTAMP)] = None,
    ) -> None:
        if verifier is None:
            raise HTTPException(503, "SendGrid webhook not configured: SENDGRID_WEBHOOK_PUBLIC_KEY is not set")
        body = await request.body()
        if not signature or not timestamp or not _verified(verifier, body, signature, timestamp):
            raise HTTPException(403, f"missing or invalid {EventWebhookHeader.SIGNATURE}")
        # Signed, so the timestamp is SendGrid's: only its age is in question.
        if not timestamp.isdigit() or abs(time.time() - int(timestamp)) > tolerance:
            raise HTTPException(
                403, f"{EventWebhookHeader.TIMESTAMP} is more than {tolerance:g} s from now: a replayed post is refused"
            )

    return signed_by_sendgrid


def _verified(verifier: EventWebhook, body: bytes, signature: str, timestamp: str) -> bool:
    try:
        return verifier.verify_signature(body.decode("utf-8"), signature, timestamp)
    except ValueError:  # not UTF-8, or a signature that is not base64 or DER
        return False


def _sendgrid_event(item: Any) -> provider_events.ProviderEvent:
    """One item of a post, read; one we cannot read is kept as unreadable,
    under its own sg_event_id if it has one, else a hash of it, so that a
    post repeated with it records it once."""
    try:
        e = SendGridEvent.model_validate(item)
    except ValidationError as err:
        return provider_events.unreadable(provider="sendgrid", event_id=_odd_event_id(item), what_was_wrong=_what_was_wrong(item, err))
    return provider_events.from_sendgrid(
        event_id=e.sg_event_id,
        event=e.event,
        occurred_at=datetime.fromtimestamp(e.timestamp, timezone.utc),
        message_key=e.message_key,
        sg_message_id=e.sg_message_id,
        bounce_type=e.type,
        reason=e.reason,
    )


def _odd_event_id(item: Any) -> str:
    event_id = item.get("sg_event_id") if isinstance(item, dict) else None
    if isinstance(event_id, str) and 0 < len(event_id) <= SENDGRID_EVENT_ID_LENGTH:
        return event_id
    return hashlib.sha256(json.dumps(item, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _what_was_wrong(item: Any, err: ValidationError) -> str:
    """By field name and error type only: nothing the event carried."""
    if not isinstance(item, dict):
        return "not an object"
    name = item.get("event")
    wrong = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['type']}" for e in err.errors(include_url=False))
    return f"{name} event, {wrong}" if isinstance(name, str) and EVENT_NAME.match(name) else wrong


def add_event_webhooks(app: FastAPI, config: WebConfig, relay: OwedSignals, meter: MetricMeter) -> None:
    signed_by_sendgrid = sendgrid_signature(config)
    signed_by_twilio = twilio_signature(config)
    unreadable_events = meter.create_counter(UNREADABLE_EVENTS, "Provider events the HTTP service could not read, kept as unreadable")

    async def record_and_tell(
        provider: str, background: BackgroundTasks, events: Sequence[provider_events.ProviderEvent]
    ) -> list[provider_events.Recorded]:
        """Every event of a post in one transaction; once committed, the post
        is answered, and the orders told after the answer, so how long
        Temporal takes (or whether it is there at all) never holds up the
        provider: what a signal could not deliver, the relay does."""
        async with app.state.pool.acquire() as conn, conn.transaction():
            recorded = [await provider_events.record(conn, event) for event in events]
        owed = [r.event_id for r in recorded if r.signal is not None]
        if owed:
            background.add_task(relay.tell, provider, owed)
        return recorded

    @app.post(
        SENDGRID_EVENTS_PATH,
        dependencies=[Depends(signed_by_sendgrid)],
        max_body_size=config.sendgrid_webhook_max_body_bytes,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {"application/json": {"schema": {"type": "array", "items": SendGridEvent.model_json_schema()}}},
            }
        },
        responses={
            403: {"description": "missing or invalid signature, or a timestamp outside the tolerance"},
            503: {"description": "SENDGRID_WEBHOOK_PUBLIC_KEY is not configured"},
        },
    )
    async def sendgrid_events(request: Request, background: BackgroundTasks) -> dict[str, int]:
        """SendGrid's signed Event Webhook: a batch of events, each kept once."""
        # Parsed here, after the signature: an unsigned post is 403 whatever its body.
        try:
            items = SENDGRID_POST.validate_json(await request.body())
        except ValidationError as err:  # not JSON, or not an array: not SendGrid's
            errors = err.errors(include_url=False, include_context=False)
            raise RequestValidationError([{**e, "loc": ("body", *e["loc"])} for e in errors]) from None
        events = [_sendgrid_event(item) for item in items]
        recorded = await record_and_tell("sendgrid", background, events)
        duplicates = sum(r.duplicate for r in recorded)
        odd = [(e, r) for e, r in zip(events, recorded) if e.event == provider_events.UNREADABLE]
        if new_odd := [e.detail for e, r in odd if not r.duplicate]:  # counted once, however often posted
            unreadable_events.add(len(new_odd), {"provider": "sendgrid"})
            log.warning("SendGrid posted %d event(s) we cannot read: %s", len(new_odd), "; ".join(map(str, new_odd)))
        log.info("SendGrid posted %d event(s), %d already recorded, %d unreadable", len(recorded), duplicates, len(odd))
        return {"received": len(recorded), "duplicates": duplicates, "unreadable": len(odd)}

    @app.post(
        SMS_STATUS_CALLBACK_PATH,
        dependencies=[Depends(signed_by_twilio)],
        responses={
            403: {"description": "missing or invalid X-Twilio-Signature"},
            503: {"description": "TWILIO_AUTH_TOKEN is not configured"},
        },
    )
    async def twilio_status(
        key: Annotated[str, Query(max_length=512, description="the message's ledger key, as the send put it in StatusCallback")],
        message_sid: Annotated[str, Form(alias="MessageSid", pattern=r"^(SM|MM)[0-9a-fA-F]{32}$")],
        status: Annotated[TwilioStatus, Form(alias="MessageStatus")],
        background: BackgroundTasks,
        error_code: Annotated[int | None, Form(alias="ErrorCode")] = None,
    ) -> dict[str, bool]:
        """Twilio's status callback for an SMS we sent."""
        event = provider_events.from_twilio(ledger_key=key, message_sid=message_sid, status=status, error_code=error_code)
        [recorded] = await record_and_tell("twilio", background, [event])
        log.info("Twilio status %s for %s%s", status, key, " (already recorded)" if recorded.duplicate else "")
        return {"duplicate": recorded.duplicate}
