"""The endpoints: unsubscribe links (RFC 8058 one-click included) and Twilio's
inbound-SMS webhook. The feedback page and votes are in web/answers.py. Each writes PostgreSQL, the truth read at send time,
commits, and only then tells the customer's workflow by signal. The
providers' reports on messages they took are in web/webhooks.py.

Nothing here logs a phone number, address, message body, token or secret.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Annotated, Any

import asyncpg
from fastapi import BackgroundTasks, Depends, FastAPI, Form, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, PlainTextResponse, Response
from temporalio.client import Client
from temporalio.common import MetricMeter
from temporalio.runtime import Runtime
from twilio.twiml.messaging_response import MessagingResponse

from messages.unsubscribe_tokens import InvalidToken, verify
from store.consent import customers_reached_at, customers_sharing_address, lift_suppression, set_consent, suppress
from store.database import create_pool, migrate
from web import erasures, pages
from web.answers import add_answer_pages
from web.erasures import add_erasure_endpoints
from web.config import ConfigError, WebConfig
from web.metrics import CountRejections
from web.signals import OwedSignals, RelayTiming, Signals
from web.sms_statuses import LookupTiming, SmsStatuses
from web.webhooks import add_event_webhooks, twilio_signature
from workflows.models import Channel, MessageClass, customer_workflow_id

log = logging.getLogger(__name__)

# Twilio's own keyword lists: the whole body, trimmed, in any case.
OPT_OUT = frozenset({"STOP", "STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT"})
OPT_IN = frozenset({"START", "YES", "UNSTOP"})
HELP = frozenset({"HELP", "INFO"})

Token = Annotated[str, Query(description="the signed token from the unsubscribe link")]

WHAT = {Channel.EMAIL: "marketing email", Channel.SMS: "marketing text messages"}
# No action: the form posts to this very URL, token included.
CONFIRM = """<h1>Unsubscribe?</h1>
<p>Stop {what} from us? Messages about your orders keep coming.</p>
<form method="post"><input type="hidden" name="List-Unsubscribe" value="One-Click">
<button type="submit">Unsubscribe</button></form>"""
DONE = """<h1>Unsubscribed</h1>
<p>You will get no more {what} from us. Messages about your orders keep coming.</p>"""


def create_app(
    config: WebConfig,
    pool: asyncpg.Pool | None = None,
    temporal_client: Client | None = None,
    runtime: Runtime | None = None,
    relay_timing: RelayTiming = RelayTiming(),
    lookup_timing: LookupTiming = LookupTiming(),
) -> FastAPI:
    """With no `pool`, one is opened on DATABASE_URL for the app's lifetime;
    with no `temporal_client`, one is connected on the first signal. With a
    `runtime` (worker.prometheus_runtime), refused requests and that client's
    calls are counted on its metrics endpoint. While the app runs (its
    lifespan), the relay delivers the signals provider reports owe, and the
    SMS whose status callback did not come are looked up in Twilio."""
    if pool is None and not config.database_url:
        raise ConfigError("DATABASE_URL is required, e.g. postgresql://user:pass@localhost:5432/orders")
    # The data keys of customers' workflows are in the service's own database.
    temporal_env = {**config.temporal_env, "DATABASE_URL": config.database_url} if config.database_url else config.temporal_env
    signals = Signals(temporal_env, temporal_client, runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if pool is None:
            # As the worker does, under the same lock: the service may start
            # first, and it reads and writes tables of the latest schema.
            await migrate(config.database_url, config.erasure_salt)
            app.state.pool = await create_pool(config.database_url, erasure_salt=config.erasure_salt)
        tasks = [asyncio.create_task(app.state.owed_signals.run()), asyncio.create_task(app.state.sms_statuses.run())]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if pool is None:
                await app.state.pool.close()

    app = FastAPI(
        title="order-lifecycle HTTP service",
        version=version("order-lifecycle"),
        description="Unsubscribe links and provider webhooks. Writes PostgreSQL, then signals the workflow concerned.",
        max_body_size=config.max_body_bytes,
        lifespan=lifespan,
    )
    app.state.pool = pool
    meter = runtime.metric_meter if runtime else MetricMeter.noop
    app.state.owed_signals = OwedSignals(
        lambda: app.state.pool, signals, relay_timing, meter, after_each_pass=lambda: erasures.settle_open(app.state.pool, signals)
    )
    app.state.sms_statuses = SmsStatuses(lambda: app.state.pool, config, app.state.owed_signals, lookup_timing, meter)
    app.add_middleware(CountRejections, meter=meter)

    @app.exception_handler(InvalidToken)
    async def invalid_token(request: Request, err: InvalidToken) -> PlainTextResponse:
        request.state.rejection = f"token_{err.kind}"  # for CountRejections
        return PlainTextResponse(str(err), status_code=400, headers=pages.HEADERS)

    refused = {400: {"description": "malformed or tampered token (the text says which)"}}

    @app.get("/unsubscribe", response_class=HTMLResponse, responses=refused)
    async def unsubscribe_page(token: Token) -> HTMLResponse:
        """The link in a marketing email: a page asking to confirm. It changes
        nothing, because link scanners fetch every link they see."""
        claim = verify(token, config.unsubscribe_secret)
        return _page(CONFIRM.format(what=WHAT[claim.channel]))

    @app.post("/unsubscribe", response_class=HTMLResponse, responses=refused)
    async def unsubscribe(
        request: Request,
        background: BackgroundTasks,
        token: Token,
        one_click: Annotated[str | None, Form(alias="List-Unsubscribe", description="`One-Click` (RFC 8058)")] = None,
    ) -> HTMLResponse:
        """RFC 8058 one-click unsubscribe (mail clients), and the page's button.
        Stops the marketing on the token's channel to the customer's address,
        for every customer at it; repeating it is harmless."""
        claim = verify(token, config.unsubscribe_secret)
        if one_click != "One-Click" and len(await request.form()):
            raise _invalid("List-Unsubscribe", "literal_error", "Input should be 'One-Click' (RFC 8058)", one_click)
        async with app.state.pool.acquire() as conn, conn.transaction():
            changed = await _unsubscribe(conn, claim.customer_id, claim.channel, "one-click" if one_click else "link")
        change = _change(MessageClass.MARKETING, claim.channel, False, "unsubscribe_link")
        for customer_id in changed:  # a repeat has nothing new to tell
            background.add_task(_tell_customer, customer_id, change)
        return _page(DONE.format(what=WHAT[claim.channel]))

    async def _tell_customer(customer_id: str, change: dict[str, Any]) -> None:
        """Best effort: consent is read at send time, so a signal lost loses nothing."""
        await signals.send(customer_workflow_id(customer_id), "consent_changed", change)

    @app.post(
        "/webhooks/twilio/inbound",
        dependencies=[Depends(twilio_signature(config))],
        response_class=Response,
        responses={
            200: {"content": {"text/xml": {}}, "description": "TwiML"},
            403: {"description": "missing or invalid X-Twilio-Signature"},
            503: {"description": "TWILIO_AUTH_TOKEN is not configured"},
        },
    )
    async def twilio_inbound(
        request: Request,
        background: BackgroundTasks,
        from_number: Annotated[str, Form(alias="From", description="the sender, E.164")],
        message_sid: Annotated[
            str, Form(alias="MessageSid", pattern=r"^(SM|MM)[0-9a-fA-F]{32}$", description="Twilio's id of the message")
        ],
        body: Annotated[str, Form(alias="Body", description="the text; empty for a picture alone")] = "",
    ) -> Response:
        """Twilio's inbound-message webhook: opt-out, opt-in and help keywords."""
        # Twilio always sends Body, empty for a picture alone, which FastAPI
        # reads as absent: so presence is checked on the form itself.
        if "Body" not in await request.form():
            raise _invalid("Body", "missing", "Field required")
        keyword = body.strip().upper()
        if keyword in HELP:
            reply = MessagingResponse()
            reply.message(config.sms_help_text)
            return _twiml(reply)
        if keyword in OPT_OUT or keyword in OPT_IN:
            opting_out = keyword in OPT_OUT
            async with app.state.pool.acquire() as conn, conn.transaction():
                first_time = await conn.fetchval(
                    "INSERT INTO sms_keywords_seen (message_sid) VALUES ($1) ON CONFLICT DO NOTHING RETURNING true", message_sid
                )
                # A repeat of a message already acted on: Twilio's retry, or a replay.
                changed = await (_opt_out if opting_out else _opt_in)(conn, from_number, keyword) if first_time else []
            log.info("SMS %s keyword changed %d customer(s)", "opt-out" if opting_out else "opt-in", len(changed))
            klass = MessageClass.MARKETING if opting_out else MessageClass.TRANSACTIONAL
            for customer_id in changed:
                background.add_task(_tell_customer, customer_id, _change(klass, Channel.SMS, not opting_out, "sms_keyword"))
        # Twilio's Advanced Opt-Out answers STOP and START itself.
        return _twiml(MessagingResponse())

    add_event_webhooks(app, config, app.state.owed_signals, meter)
    add_answer_pages(app, config, app.state.owed_signals)
    add_erasure_endpoints(app, config, app.state.owed_signals)

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


async def _unsubscribe(conn: asyncpg.Connection, customer_id: str, channel: Channel, how: str) -> list[str]:
    """Marketing off on `channel` for the customer and everyone at their
    address: it is the address that asked, as with an SMS STOP. None for a
    customer not recorded (erased since the mail went out): nothing to
    record, nothing to send to. Returns the customers this changed."""
    return [
        someone
        for someone in await customers_sharing_address(conn, customer_id, channel)
        if await set_consent(conn, someone, MessageClass.MARKETING, channel, False, source="unsubscribe_link", detail=how)
    ]


async def _opt_out(conn: asyncpg.Connection, number: str, keyword: str) -> list[str]:
    """Nothing more to this number; marketing SMS off for every customer at it.
    Returns the customers this changed anything for."""
    suppressed = await suppress(conn, Channel.SMS, number, reason="STOP keyword", source="sms_keyword")
    changed = []
    for customer_id in await customers_reached_at(conn, Channel.SMS, number):
        consent_changed = await set_consent(
            conn, customer_id, MessageClass.MARKETING, Channel.SMS, False, source="sms_keyword", detail=keyword
        )
        if consent_changed or suppressed:
            changed.append(customer_id)
    return changed


async def _opt_in(conn: asyncpg.Connection, number: str, keyword: str) -> list[str]:
    """Order messages may go to this number again. Marketing SMS stays off:
    START undoes the STOP, but consent to marketing must be given again
    explicitly (as at checkout), not inferred from a keyword."""
    lifted = await lift_suppression(conn, Channel.SMS, number)
    changed = []
    for customer_id in await customers_reached_at(conn, Channel.SMS, number):
        consent_changed = await set_consent(
            conn, customer_id, MessageClass.TRANSACTIONAL, Channel.SMS, True, source="sms_keyword", detail=keyword
        )
        if consent_changed or lifted:
            changed.append(customer_id)
    return changed


def _change(klass: MessageClass, channel: Channel, granted: bool, source: str) -> dict[str, Any]:
    """The `consent_changed` signal's payload: plain JSON."""
    return {"message_class": klass.value, "channel": channel.value, "granted": granted, "source": source}


def _invalid(field: str, kind: str, message: str, value: Any = None) -> RequestValidationError:
    """A 422 in FastAPI's own shape, naming the form field."""
    return RequestValidationError([{"type": kind, "loc": ("body", field), "msg": message, "input": value}])


def _page(content: str) -> HTMLResponse:
    return pages.page("Unsubscribe", content)


def _twiml(reply: MessagingResponse) -> Response:
    return Response(str(reply), media_type="text/xml")
