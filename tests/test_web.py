"""The HTTP service (web/): unsubscribe links, Twilio's inbound webhook, and
what they write to PostgreSQL and signal to the customer's workflow."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import socket
import stat
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest
from temporalio import workflow
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import UnsandboxedWorkflowRunner, Worker
from twilio.request_validator import RequestValidator

from codec import KEY_VARIABLES
from messages.unsubscribe_tokens import sign
from store.consent import set_consent
from tests.conftest import TEST_KEY_ENV, new_order, store
from tests.test_log_privacy import everything_at_debug, logged_text
from web.app import create_app
from web.config import ConfigError, WebConfig, local_secret
from web.server import start
from workflows.models import Channel, MessageClass

SECRET = "unsubscribe-secret-" + uuid.uuid4().hex
TWILIO_TOKEN = "twilio-token-" + uuid.uuid4().hex
PUBLIC_URL = "https://hooks.shop.example"
INBOUND = "/webhooks/twilio/inbound"
ONE_CLICK = {"List-Unsubscribe": "One-Click"}


def unused_port() -> int:
    """A port nobody listens on (until someone takes it)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_config(database_url: str, **settings: Any) -> WebConfig:
    """The HTTP service's configuration in tests. Temporal at a closed port:
    unless a test injects a client, signals fail."""
    return WebConfig(**{
        "unsubscribe_secret": SECRET,
        "database_url": database_url,
        "public_url": PUBLIC_URL,
        "temporal_env": {"TEMPORAL_ADDRESS": f"127.0.0.1:{unused_port()}", **TEST_KEY_ENV},
        **settings,
    })


@pytest.fixture
def config(database_url: str) -> WebConfig:
    return service_config(database_url, twilio_auth_token=TWILIO_TOKEN)


@dataclass
class FakeTemporal:
    """Records signals as a Temporal client would send them."""

    sent: list[tuple[str, str, Any]] = field(default_factory=list)

    def get_workflow_handle(self, workflow_id: str) -> FakeTemporal.Handle:
        return FakeTemporal.Handle(self, workflow_id)

    @dataclass
    class Handle:
        client: FakeTemporal
        workflow_id: str

        async def signal(self, name: str, arg: Any, **kwargs: Any) -> None:
            self.client.sent.append((self.workflow_id, name, arg))

        async def describe(self, **kwargs: Any) -> None:
            """No workflow runs here: each signalled one is over at once."""
            raise RPCError("workflow not found", RPCStatusCode.NOT_FOUND, b"")


@pytest.fixture
def temporal() -> FakeTemporal:
    return FakeTemporal()


@pytest.fixture
async def client(config: WebConfig, pool: asyncpg.Pool, temporal: FakeTemporal) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(config, pool=pool, temporal_client=temporal)  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=config.public_url) as http:
        yield http


@dataclass
class Customer:
    customer_id: str
    email: str
    phone: str
    name: str


async def new_customer(pool: asyncpg.Pool, phone: str | None = None, email: str | None = None) -> Customer:
    uid = uuid.uuid4().hex[:10]
    customer = Customer(
        f"C{uid}", email or f"web.{uid}@example.com", phone or "+4860" + str(int(uid, 16) % 10**7).zfill(7), f"Ada {uid}"
    )
    await pool.execute(
        "INSERT INTO customers (customer_id, name, email, phone, timezone) VALUES ($1, $2, $3, $4, 'Europe/Warsaw')",
        customer.customer_id,
        customer.name,
        customer.email,
        customer.phone,
    )
    return customer


async def consent(pool: asyncpg.Pool, customer_id: str) -> dict[tuple[str, str], bool]:
    rows = await pool.fetch("SELECT message_class, channel, granted FROM consent WHERE customer_id = $1", customer_id)
    return {(r["message_class"], r["channel"]): r["granted"] for r in rows}


async def audit(pool: asyncpg.Pool, customer_id: str) -> list[tuple[str, str, bool, str, str | None]]:
    rows = await pool.fetch(
        "SELECT message_class, channel, granted, source, detail FROM consent_audit WHERE customer_id = $1 ORDER BY id",
        customer_id,
    )
    return [tuple(r) for r in rows]


def token_for(customer: Customer, channel: Channel = Channel.EMAIL, *, secret: str = SECRET, age: timedelta = timedelta(0)) -> str:
    return sign(customer.customer_id, channel, secret, datetime.now(timezone.utc) - age)


def tampered(token: str, customer_id: str) -> str:
    """The payload rewritten to another customer, the signature kept."""
    payload, signature = token.split(".")
    fields = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    fields["c"] = customer_id
    forged = base64.urlsafe_b64encode(json.dumps(fields).encode()).rstrip(b"=").decode()
    return f"{forged}.{signature}"


def signed(params: dict[str, str], *, token: str = TWILIO_TOKEN, url: str = PUBLIC_URL + INBOUND) -> dict[str, str]:
    return {"X-Twilio-Signature": RequestValidator(token).compute_signature(url, params)}


async def sms(http: httpx.AsyncClient, text: str | None, sender: str | None, **sign_args: Any) -> httpx.Response:
    params = {"MessageSid": "SM" + uuid.uuid4().hex, "AccountSid": "AC" + "0" * 32, "To": "+15005550006"}
    if sender is not None:
        params["From"] = sender
    if text is not None:
        params["Body"] = text
    return await http.post(INBOUND, data=params, headers=signed(params, **sign_args))


# --- unsubscribe links ---------------------------------------------------------


@pytest.mark.parametrize(
    "kind, message",
    [
        ("forged", "signature does not match"),
        ("tampered", "signature does not match"),
        ("malformed", "malformed"),
    ],
)
async def test_bad_token_is_refused_with_its_reason_and_records_nothing(client, pool, temporal, kind: str, message: str):
    customer, victim = await new_customer(pool), await new_customer(pool)
    token = {
        "forged": token_for(customer, secret="not-our-secret"),
        "tampered": tampered(token_for(customer), victim.customer_id),
        "malformed": "not-a-token",
    }[kind]
    for method in ("GET", "POST"):
        body = ONE_CLICK if method == "POST" else None
        response = await client.request(method, "/unsubscribe", params={"token": token}, data=body)
        assert response.status_code == 400
        assert response.headers["content-type"].startswith("text/plain")
        assert message in response.text and "Traceback" not in response.text
    for someone in (customer, victim):
        assert await consent(pool, someone.customer_id) == {}
        assert await audit(pool, someone.customer_id) == []
    assert temporal.sent == []


async def test_one_click_unsubscribes_once_and_signals_the_customer(client, pool, temporal):
    customer = await new_customer(pool)
    async with pool.acquire() as conn:
        await set_consent(conn, customer.customer_id, MessageClass.MARKETING, Channel.EMAIL, True, source="checkout")
    url = f"/unsubscribe?token={token_for(customer)}"

    first = await client.post(url, data=ONE_CLICK)
    again = await client.post(url, data=ONE_CLICK)

    assert first.status_code == again.status_code == 200
    assert "no more marketing email" in first.text
    assert await consent(pool, customer.customer_id) == {("marketing", "email"): False}
    assert await audit(pool, customer.customer_id) == [
        ("marketing", "email", True, "checkout", None),
        ("marketing", "email", False, "unsubscribe_link", "one-click"),
    ]
    expected = {"message_class": "marketing", "channel": "email", "granted": False, "source": "unsubscribe_link"}
    assert temporal.sent == [(f"customer-{customer.customer_id}", "consent_changed", expected)]


async def test_unsubscribe_applies_to_every_customer_at_the_address(client, pool, temporal):
    """A guest checkout and a registered account with one address: the
    unsubscribe of either stops the marketing to that address, as an SMS STOP
    does for a number."""
    guest = await new_customer(pool)
    account, elsewhere = await new_customer(pool, email=guest.email), await new_customer(pool)
    async with pool.acquire() as conn:
        for someone in (guest, account, elsewhere):
            await set_consent(conn, someone.customer_id, MessageClass.MARKETING, Channel.EMAIL, True, source="checkout")

    response = await client.post(f"/unsubscribe?token={token_for(guest)}", data=ONE_CLICK)

    assert response.status_code == 200
    expected = {"message_class": "marketing", "channel": "email", "granted": False, "source": "unsubscribe_link"}
    for someone in (guest, account):
        assert await consent(pool, someone.customer_id) == {("marketing", "email"): False}
        assert (await audit(pool, someone.customer_id))[-1] == ("marketing", "email", False, "unsubscribe_link", "one-click")
    assert await consent(pool, elsewhere.customer_id) == {("marketing", "email"): True}
    assert sorted(temporal.sent) == sorted((f"customer-{c.customer_id}", "consent_changed", expected) for c in (guest, account))
    # Again, from the other account's mail: nothing new.
    assert (await client.post(f"/unsubscribe?token={token_for(account)}", data=ONE_CLICK)).status_code == 200
    assert len(await audit(pool, guest.customer_id)) == len(await audit(pool, account.customer_id)) == 2
    assert len(temporal.sent) == 2


async def test_a_validly_signed_token_unsubscribes_whatever_its_age(client, pool, temporal):
    """A mail client offers the one-click unsubscribe of a mail read months
    later; tokens signed before this still carry the 90 days they were given."""
    customer = await new_customer(pool)
    token = token_for(customer, age=timedelta(days=400))
    assert (await client.get(f"/unsubscribe?token={token}")).status_code == 200
    response = await client.post(f"/unsubscribe?token={token}", data=ONE_CLICK)
    assert response.status_code == 200 and "no more marketing email" in response.text
    assert await consent(pool, customer.customer_id) == {("marketing", "email"): False}


# --- consent given at checkout -----------------------------------------------------


async def test_a_retried_or_replayed_order_does_not_undo_a_later_unsubscribe(client, pool, temporal):
    """record_order is retried (and a backend may replay "order created"):
    the consent its checkout gave is applied once, when the order is first
    stored, not again over an unsubscribe that came after."""
    order = new_order()
    await store(pool, order)
    cid = order["customer"]["customer_id"]
    assert await consent(pool, cid) == {("marketing", "email"): True}
    customer = Customer(cid, order["customer"]["email"], order["customer"]["phone"], order["customer"]["name"])
    assert (await client.post(f"/unsubscribe?token={token_for(customer)}", data=ONE_CLICK)).status_code == 200

    await store(pool, order)  # the activity's retry, or the replay, a moment later
    await store(pool, {**order, "placed_at": datetime.now(timezone.utc).isoformat()})  # even with a later placed_at

    assert await consent(pool, cid) == {("marketing", "email"): False}
    assert [row[2:4] for row in await audit(pool, cid)] == [(True, "checkout"), (False, "unsubscribe_link")]


async def test_an_unsubscribe_applies_after_a_checkout_dated_ahead(client, pool):
    """A backend whose clock runs ahead dates the checkout after the
    customer's unsubscribe: the customer's own change applies all the same."""
    order = {**new_order(), "placed_at": (datetime.now(timezone.utc) + timedelta(minutes=10)).isoformat()}
    await store(pool, order)
    c = order["customer"]
    assert (await client.post(f"/unsubscribe?token={token_for(Customer(c['customer_id'], c['email'], c['phone'], c['name']))}")).status_code == 200
    assert await consent(pool, c["customer_id"]) == {("marketing", "email"): False}


async def test_checkout_consent_applies_only_if_newer_than_the_last_change(client, pool, temporal):
    """An order placed before the customer unsubscribed, stored after (a
    backend's late delivery), does not undo it; one placed after does.
    Each checkout counts from when its order was placed, not from when it
    was stored: the later of two checkouts decides, in whatever order they come."""
    first = new_order()
    await store(pool, first)
    cid, email = first["customer"]["customer_id"], first["customer"]["email"]
    customer = Customer(cid, email, first["customer"]["phone"], first["customer"]["name"])
    assert (await client.post(f"/unsubscribe?token={token_for(customer)}", data=ONE_CLICK)).status_code == 200

    def another_order(placed: datetime, email_consent: bool) -> dict[str, Any]:
        order = new_order(customer={**first["customer"], "marketing_consent": {"email": email_consent}})
        return {**order, "placed_at": placed.isoformat()}

    now = datetime.now(timezone.utc)
    await store(pool, another_order(now - timedelta(hours=1), True))  # placed before the unsubscribe
    assert await consent(pool, cid) == {("marketing", "email"): False}

    later = another_order(now + timedelta(seconds=3), False)
    await store(pool, another_order(now + timedelta(seconds=1), True))  # placed after it: consent again
    assert await consent(pool, cid) == {("marketing", "email"): True}
    await store(pool, later)  # placed two seconds after that one, stored after it
    assert await consent(pool, cid) == {("marketing", "email"): False}
    await store(pool, another_order(now + timedelta(seconds=2), True))  # placed between them, stored last
    assert await consent(pool, cid) == {("marketing", "email"): False}
    assert [row[2:4] for row in await audit(pool, cid)] == [
        (True, "checkout"), (False, "unsubscribe_link"), (True, "checkout"), (False, "checkout")
    ]


async def test_one_click_takes_multipart_as_rfc_8058_advises_and_an_empty_post(client, pool):
    by_multipart, by_empty_post = await new_customer(pool), await new_customer(pool)
    multipart = await client.post(
        f"/unsubscribe?token={token_for(by_multipart)}", files={"List-Unsubscribe": (None, "One-Click")}
    )
    empty = await client.post(f"/unsubscribe?token={token_for(by_empty_post, Channel.SMS)}")
    assert multipart.status_code == empty.status_code == 200
    assert await audit(pool, by_multipart.customer_id) == [("marketing", "email", False, "unsubscribe_link", "one-click")]
    assert await audit(pool, by_empty_post.customer_id) == [("marketing", "sms", False, "unsubscribe_link", "link")]


@pytest.mark.parametrize("body", [{"List-Unsubscribe": "Yes"}, {"List-Unsubscribe": ""}, {"unsubscribe": "1"}])
async def test_one_click_with_another_body_is_422_naming_the_field(client, pool, body: dict[str, str]):
    customer = await new_customer(pool)
    response = await client.post(f"/unsubscribe?token={token_for(customer)}", data=body)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "List-Unsubscribe"]]
    assert await audit(pool, customer.customer_id) == []


async def test_missing_token_is_422_naming_it(client):
    response = await client.post("/unsubscribe", data=ONE_CLICK)
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["query", "token"]]


async def test_page_asks_to_confirm_changes_nothing_and_its_button_unsubscribes(client, pool, temporal):
    customer = await new_customer(pool)
    url = f"/unsubscribe?token={token_for(customer)}"

    page = await client.get(url)

    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["referrer-policy"] == "no-referrer"
    # No action attribute: the form posts to the page's own URL, token included.
    assert '<form method="post">' in page.text
    assert '<input type="hidden" name="List-Unsubscribe" value="One-Click">' in page.text
    assert await consent(pool, customer.customer_id) == {} and temporal.sent == []

    # What a browser sends for that form.
    pressed = await client.post(url, data=ONE_CLICK, headers={"Referer": str(page.url)})
    assert pressed.status_code == 200
    assert await consent(pool, customer.customer_id) == {("marketing", "email"): False}


async def test_token_of_an_unknown_customer_is_200_and_records_nothing(client, pool, temporal):
    gone = Customer(f"C-gone-{uuid.uuid4().hex[:8]}", "", "", "")
    response = await client.post(f"/unsubscribe?token={token_for(gone)}", data=ONE_CLICK)
    assert response.status_code == 200
    assert await audit(pool, gone.customer_id) == [] and temporal.sent == []


# --- Twilio inbound SMS --------------------------------------------------------


async def test_unsigned_or_forged_sms_webhook_is_403_and_changes_nothing(client, pool):
    customer = await new_customer(pool)
    params = {"From": customer.phone, "Body": "STOP", "To": "+15005550006"}
    attempts = {
        "unsigned": {},
        "other token": signed(params, token="not-the-token"),
        "signed for the Host, not the public URL": signed(params, url="http://testserver" + INBOUND),
        "other body": signed({**params, "Body": "HELP"}),
    }
    for name, headers in attempts.items():
        response = await client.post(INBOUND, data=params, headers=headers)
        assert response.status_code == 403, name
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE recipient = $1", customer.phone) == 0
    assert await audit(pool, customer.customer_id) == []


async def test_stop_suppresses_the_number_and_turns_marketing_sms_off_for_everyone_at_it(client, pool, temporal):
    customer = await new_customer(pool)
    household = await new_customer(pool, phone=customer.phone)
    async with pool.acquire() as conn:
        await set_consent(conn, customer.customer_id, MessageClass.MARKETING, Channel.SMS, True, source="checkout")

    response = await sms(client, "  stop ", customer.phone)

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/xml")
    assert response.text.endswith("<Response />")
    row = await pool.fetchrow("SELECT reason, source FROM suppressions WHERE channel = 'sms' AND recipient = $1", customer.phone)
    assert dict(row) == {"reason": "STOP keyword", "source": "sms_keyword"}
    for someone in (customer, household):
        assert (await consent(pool, someone.customer_id))[("marketing", "sms")] is False
        assert (await audit(pool, someone.customer_id))[-1] == ("marketing", "sms", False, "sms_keyword", "STOP")
    expected = {"message_class": "marketing", "channel": "sms", "granted": False, "source": "sms_keyword"}
    assert sorted(temporal.sent) == sorted(
        (f"customer-{c.customer_id}", "consent_changed", expected) for c in (customer, household)
    )

    # Twilio's other opt-out words do the same; again, nothing new is recorded.
    assert (await sms(client, "Unsubscribe", customer.phone)).status_code == 200
    assert len(await audit(pool, customer.customer_id)) == 2
    assert len(temporal.sent) == 2


async def test_start_lifts_the_suppression_but_leaves_marketing_off(client, pool, temporal):
    customer = await new_customer(pool)
    async with pool.acquire() as conn:
        await set_consent(conn, customer.customer_id, MessageClass.MARKETING, Channel.SMS, True, source="checkout")
    await sms(client, "STOP", customer.phone)

    response = await sms(client, "start", customer.phone)

    assert response.status_code == 200 and response.text.endswith("<Response />")
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE recipient = $1", customer.phone) == 0
    assert await consent(pool, customer.customer_id) == {("marketing", "sms"): False, ("transactional", "sms"): True}
    assert (await audit(pool, customer.customer_id))[-1] == ("transactional", "sms", True, "sms_keyword", "START")
    assert temporal.sent[-1] == (
        f"customer-{customer.customer_id}",
        "consent_changed",
        {"message_class": "transactional", "channel": "sms", "granted": True, "source": "sms_keyword"},
    )


async def test_a_replayed_start_cannot_undo_a_later_stop(client, pool, temporal):
    """Twilio's signature carries no timestamp: a signed START captured and
    posted again after the customer's next STOP must change nothing. Twilio
    gives every message its own MessageSid, so a repeat is known."""
    customer = await new_customer(pool)
    start = {"MessageSid": "SM" + uuid.uuid4().hex, "AccountSid": "AC" + "0" * 32, "To": "+15005550006",
             "From": customer.phone, "Body": "START"}
    assert (await sms(client, "STOP", customer.phone)).status_code == 200
    assert (await client.post(INBOUND, data=start, headers=signed(start))).status_code == 200
    assert (await sms(client, "STOP", customer.phone)).status_code == 200
    replayed = await client.post(INBOUND, data=start, headers=signed(start))
    assert replayed.status_code == 200 and replayed.text.endswith("<Response />")
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE recipient = $1", customer.phone) == 1
    assert [row[2:] for row in await audit(pool, customer.customer_id)][-1] == (True, "sms_keyword", "START")


async def test_help_answers_with_the_configured_text_and_other_texts_change_nothing(config, pool):
    customer = await new_customer(pool)
    app = create_app(replace(config, sms_help_text="Shop & Co: reply STOP to stop."), pool=pool)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC_URL) as http:
        help_reply = await sms(http, " Info", customer.phone)
        chat = await sms(http, "stop sending the blue one please", customer.phone)
        picture = await sms(http, "", customer.phone)  # Twilio sends Body empty with a picture alone
    assert help_reply.status_code == 200 and help_reply.headers["content-type"].startswith("text/xml")
    assert help_reply.text.endswith("<Response><Message>Shop &amp; Co: reply STOP to stop.</Message></Response>")
    assert chat.text.endswith("<Response />") and picture.text.endswith("<Response />")
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE recipient = $1", customer.phone) == 0
    assert await audit(pool, customer.customer_id) == []


@pytest.mark.parametrize("missing", ["From", "Body"])
async def test_signed_sms_without_a_field_is_422_naming_it(client, missing: str):
    response = await sms(client, None if missing == "Body" else "STOP", None if missing == "From" else "+48600000001")
    assert response.status_code == 422
    assert [e["loc"] for e in response.json()["detail"]] == [["body", missing]]


async def test_sms_webhook_without_twilio_token_is_503_not_open(config, pool):
    app = create_app(replace(config, twilio_auth_token=None), pool=pool)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC_URL) as http:
        response = await sms(http, "STOP", "+48600000002")
    assert response.status_code == 503 and "TWILIO_AUTH_TOKEN" in response.text


# --- cross-cutting -------------------------------------------------------------


async def test_oversized_bodies_are_413_by_length_and_by_stream(client, pool, config):
    customer = await new_customer(pool)
    big = {"From": customer.phone, "Body": "STOP", "Padding": "x" * config.max_body_bytes}

    declared = await client.post(INBOUND, data=big, headers=signed(big))

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(config.max_body_bytes // 1024 + 2):
            yield b"x" * 1024

    streamed = await client.post(
        f"/unsubscribe?token={token_for(customer)}",
        content=chunks(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert "content-length" not in streamed.request.headers
    assert declared.status_code == streamed.status_code == 413
    assert await audit(pool, customer.customer_id) == []


async def test_temporal_unreachable_still_records_and_answers(config, pool, caplog):
    customer = await new_customer(pool)
    app = create_app(config, pool=pool)  # no client: it connects on the first signal, to a closed port
    caplog.set_level(logging.INFO, logger="web")
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC_URL) as http:
        response = await http.post(f"/unsubscribe?token={token_for(customer)}", data=ONE_CLICK)
        assert (await sms(http, "STOP", customer.phone)).status_code == 200
    assert response.status_code == 200
    assert await consent(pool, customer.customer_id) == {("marketing", "email"): False, ("marketing", "sms"): False}
    unreachable = [r.getMessage() for r in caplog.records if "Temporal unreachable" in r.getMessage()]
    assert unreachable == [f"customer-{customer.customer_id} not signalled: Temporal unreachable (RuntimeError)"] * 2


async def test_healthz_and_openapi(client):
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    spec = (await client.get("/openapi.json")).json()
    assert spec["info"]["title"] == "order-lifecycle HTTP service" and spec["info"]["version"]
    assert {"/unsubscribe", INBOUND, "/healthz"} <= set(spec["paths"])
    form = spec["components"]["schemas"]["Body_twilio_inbound_webhooks_twilio_inbound_post"]["properties"]
    assert {"From", "Body"} <= set(form)
    assert (await client.get("/docs")).status_code == 200


def test_config_from_environment(tmp_path: Path):
    with pytest.raises(ConfigError, match="UNSUBSCRIBE_SECRET is required"):
        WebConfig.from_env({"DATABASE_URL": "postgresql://x", **TEST_KEY_ENV})
    with pytest.raises(ConfigError, match="WEB_PORT"):
        WebConfig.from_env({"UNSUBSCRIBE_SECRET": "s", "WEB_PORT": "eighty", **TEST_KEY_ENV})
    # It signals customers' workflows, so it never starts without the payload keys.
    with pytest.raises(ConfigError, match="PAYLOAD_ENCRYPTION_KEYS or PAYLOAD_ENCRYPTION_KEYS_FILE is required"):
        WebConfig.from_env({"UNSUBSCRIBE_SECRET": "s"})
    config = WebConfig.from_env(
        {"UNSUBSCRIBE_SECRET": "link-key", "TWILIO_AUTH_TOKEN": "sms-key", "WEB_PORT": "8123", "TEMPORAL_ADDRESS": "t:7233", "PATH": "/bin", **TEST_KEY_ENV}
    )
    assert (config.host, config.port, config.public_url) == ("127.0.0.1", 8123, "http://localhost:8123")
    assert config.max_body_bytes == 65536
    payload_keys = {k: v for k, v in TEST_KEY_ENV.items() if k in KEY_VARIABLES}
    assert config.temporal_env == {"TEMPORAL_ADDRESS": "t:7233", **payload_keys} and config.twilio_auth_token == "sms-key"
    assert config.erasure_salt == TEST_KEY_ENV["ERASURE_SALT"]
    # A logged config leaks no secret.
    assert "link-key" not in repr(config) and "sms-key" not in repr(config) and config.erasure_salt not in repr(config)
    with pytest.raises(ConfigError, match="DATABASE_URL"):
        create_app(config)

    path = tmp_path / "data" / "unsubscribe-secret"
    first = local_secret(path)
    assert len(first) >= 32 and local_secret(path) == first
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


# --- with a real Temporal server and a real uvicorn -----------------------------


@workflow.defn(name="ConsentRecorder")
class ConsentRecorder:
    """Stands in for the customer's workflow: keeps what it is told."""

    def __init__(self) -> None:
        self.changes: list[dict[str, Any]] = []

    @workflow.run
    async def run(self) -> None:
        await workflow.wait_condition(lambda: False)

    @workflow.signal(name="consent_changed")
    def consent_changed(self, change: dict[str, Any]) -> None:
        self.changes.append(change)

    @workflow.query
    def received(self) -> list[dict[str, Any]]:
        return self.changes


async def test_the_signal_reaches_the_customers_running_workflow(dev_env, config, pool, caplog):
    customer, without_workflow = await new_customer(pool), await new_customer(pool)
    queue = f"web-{uuid.uuid4().hex[:8]}"
    caplog.set_level(logging.INFO, logger="web")
    # Unsandboxed: the sandbox would re-import this module, and the whole service with it.
    worker = Worker(dev_env.client, task_queue=queue, workflows=[ConsentRecorder], workflow_runner=UnsandboxedWorkflowRunner())
    async with worker:
        workflow_id = f"customer-{customer.customer_id}"
        handle = await dev_env.client.start_workflow(ConsentRecorder.run, id=workflow_id, task_queue=queue)
        try:
            app = create_app(config, pool=pool, temporal_client=dev_env.client)
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=PUBLIC_URL) as http:
                for someone in (customer, without_workflow):
                    response = await http.post(f"/unsubscribe?token={token_for(someone)}", data=ONE_CLICK)
                    assert response.status_code == 200
            for _ in range(100):
                if received := await handle.query(ConsentRecorder.received):
                    break
                await asyncio.sleep(0.05)
            expected = {"message_class": "marketing", "channel": "email", "granted": False, "source": "unsubscribe_link"}
            assert received == [expected]
        finally:
            await handle.terminate()
    # No workflow for the other customer (no order yet): recorded all the same.
    assert await consent(pool, without_workflow.customer_id) == {("marketing", "email"): False}
    assert f"customer-{without_workflow.customer_id} not signalled: no running workflow" in caplog.text


async def test_logs_carry_no_token_contact_data_or_secret(config, pool, temporal, caplog):
    customer = await new_customer(pool)
    token = token_for(customer)
    config = replace(config, port=unused_port())
    stop = asyncio.Event()
    everything_at_debug(caplog)
    served = start(config, stop, pool=pool, temporal_client=temporal)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{config.port}") as http:
            for _ in range(100):  # until uvicorn listens
                try:
                    await http.get("/healthz")
                    break
                except httpx.ConnectError:
                    await asyncio.sleep(0.05)
            await http.get(f"/unsubscribe?token={token}")
            await http.post(f"/unsubscribe?token={token}", data=ONE_CLICK)
            await http.post(f"/unsubscribe?token={tampered(token, 'C-other')}")
            await http.post(f"/unsubscribe?token={token}", data={"List-Unsubscribe": customer.email})
            for text in ("STOP", "START", "HELP", f"I am {customer.name}, {customer.email}"):
                await sms(http, text, customer.phone)
            await http.post(INBOUND, data={"From": customer.phone, "Body": "STOP"}, headers=signed({}, token=SECRET))
    finally:
        stop.set()
        await served

    # httpx and httpcore are this test's client, logging the URLs it calls.
    records = [r for r in caplog.records if not r.name.startswith(("httpx", "httpcore"))]
    text = "\n".join(logged_text(r) for r in records)
    assert any(r.name == "uvicorn.access" and "/unsubscribe" in r.getMessage() for r in records), "access log not captured"
    assert "web.app" in {r.name for r in records}
    secrets = [token, token.split(".")[1], SECRET, TWILIO_TOKEN, customer.email, quote(customer.email), customer.name]
    secrets += [customer.phone, quote(customer.phone), customer.phone.lstrip("+")]
    assert [s for s in secrets if s in text] == []
