"""Consent, suppressions, the marketing cap, unsubscribe headers and opt-outs,
all decided by send_message when a message is due.

Each test runs the activity attempt by attempt in an ActivityEnvironment
against the real PostgreSQL and the real provider clients talking to the
fakes, as tests/test_exactly_once.py does."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import re
import uuid
from datetime import timedelta
from typing import Any
from urllib.parse import parse_qs, urlparse

import asyncpg
import pytest
from temporalio.exceptions import ApplicationError
from twilio.base.exceptions import TwilioRestException, TwilioServiceException

from activities.messaging import MessagingActivities
from messages import unsubscribe_tokens
from providers.verdicts import Verdict, classify
from store import consent, erasure
from tests.conftest import new_order, store
from tests.fake_providers import FakeProviders, RecordedRequest
from tests.test_exactly_once import attempt, logging_statements, request_for, requests_to
from workflows.ledger_key import LedgerKey
from workflows.models import (
    CUSTOMER_ERASED,
    Channel,
    DeliveryState,
    MessageClass,
    MessageOutcome,
    MessageRequest,
    Touchpoint,
    customer_workflow_id,
)

# --- helpers -------------------------------------------------------------------


async def customer(pool: asyncpg.Pool, marketing: dict[str, bool] | None = None) -> dict[str, Any]:
    """A customer recorded with their first order, and the marketing consent
    given at checkout (None: never asked, so none)."""
    order = new_order()
    order["customer"]["marketing_consent"] = marketing
    await store(pool, order)
    return order


async def set_marketing(pool: asyncpg.Pool, customer_id: str, channel: Channel, granted: bool) -> None:
    async with pool.acquire() as conn:
        await consent.set_consent(conn, customer_id, MessageClass.MARKETING, channel, granted, source="operator")


def coupon() -> dict[str, Any]:
    """Details the customer's workflow passes with a coupon."""
    return {
        "coupon_code": f"CPN-{uuid.uuid4().hex[:8].upper()}",
        "discount_percent": 15,
        "free_shipping": False,
        "expires_at": "2026-12-31T23:30:00+00:00",
    }


def journey_message(order: dict[str, Any], kind: Touchpoint, channel: Channel = Channel.EMAIL, **details: Any) -> MessageRequest:
    """A message of the customer's journey: no order."""
    cid = order["customer"]["customer_id"]
    return MessageRequest(
        key=str(LedgerKey(customer_workflow_id(cid), kind, channel, occasion=uuid.uuid4().hex[:6])),
        kind=kind,
        channel=channel,
        customer_id=cid,
        details=details or coupon(),
    )


def order_message(order: dict[str, Any], kind: Touchpoint, channel: Channel = Channel.EMAIL, **details: Any) -> MessageRequest:
    return request_for(order, channel, kind).model_copy(update={"details": details})


async def send(messaging: MessagingActivities, request: MessageRequest, number: int = 1) -> MessageOutcome:
    return await attempt(number).run(messaging.send_message, request)


async def ledger(pool: asyncpg.Pool, key: str) -> asyncpg.Record | None:
    return await pool.fetchrow(
        "SELECT state, error, attempts, order_id, customer_id, message_class, recipient, headers, created_at"
        " FROM message_ledger WHERE key = $1",
        key,
    )


def mails_to(fakes: FakeProviders, email: str) -> list[RecordedRequest]:
    return [r for r in list(fakes.requests) if r.path == "/v3/mail/send" and r.json["personalizations"][0]["to"][0]["email"] == email]


def sms_posts_to(fakes: FakeProviders, phone: str) -> list[RecordedRequest]:
    return [r for r in list(fakes.requests) if r.method == "POST" and r.path.endswith("/Messages.json") and r.form["To"] == phone]


def content(mail: RecordedRequest, kind: str) -> str:
    return next(c["value"] for c in mail.json["content"] if c["type"] == kind)


@pytest.fixture
def messaging(pool: asyncpg.Pool, provider_config) -> MessagingActivities:
    return MessagingActivities(pool, provider_config)


# --- consent, read when the message is due ----------------------------------------


async def test_marketing_without_consent_is_not_permitted_and_sends_nothing(pool, fakes: FakeProviders, messaging):
    order = await customer(pool, marketing=None)
    email = order["customer"]["email"]
    request = journey_message(order, Touchpoint.WIN_BACK)
    outcome = await send(messaging, request)
    assert outcome.state is DeliveryState.NOT_PERMITTED
    assert outcome.error == "no marketing consent on email"
    assert requests_to(fakes, email) == []
    # Registered as refused, for operators; a retry reads consent again and refuses again.
    row = await ledger(pool, request.key)
    assert (row["state"], row["error"], row["message_class"]) == ("not_permitted", outcome.error, "marketing")
    assert (row["customer_id"], row["order_id"], row["attempts"]) == (order["customer"]["customer_id"], None, 0)
    assert (await send(messaging, request, number=2)).state is DeliveryState.NOT_PERMITTED
    assert requests_to(fakes, email) == []


async def test_consent_withdrawn_after_the_order_was_recorded_is_read_at_send_time(pool, fakes: FakeProviders, messaging):
    """The stored order still says the customer agreed at checkout; the
    consent table, read at the send, says they have withdrawn since."""
    order = await customer(pool, marketing={"email": True})
    email = order["customer"]["email"]
    assert (await send(messaging, journey_message(order, Touchpoint.WELCOME))).state is DeliveryState.SENT
    await set_marketing(pool, order["customer"]["customer_id"], Channel.EMAIL, False)
    outcome = await send(messaging, order_message(order, Touchpoint.RECOMMENDATIONS))
    assert outcome.state is DeliveryState.NOT_PERMITTED and outcome.error == "no marketing consent on email"
    assert len(mails_to(fakes, email)) == 1  # the welcome only
    # Transactional messages about the order still go.
    assert (await send(messaging, order_message(order, Touchpoint.ORDER_CONFIRMATION))).state is DeliveryState.SENT


async def test_a_not_permitted_message_sent_again_reads_consent_again(pool, fakes: FakeProviders, messaging):
    order = await customer(pool, marketing=None)
    request = journey_message(order, Touchpoint.LOYALTY_REWARD)
    assert (await send(messaging, request)).state is DeliveryState.NOT_PERMITTED
    await set_marketing(pool, request.customer_id, Channel.EMAIL, True)
    outcome = await send(messaging, request)
    assert outcome.state is DeliveryState.SENT
    row = await ledger(pool, request.key)
    assert (row["state"], row["error"], row["attempts"]) == ("sent", None, 1)
    assert len(mails_to(fakes, order["customer"]["email"])) == 1


async def test_transactional_goes_without_any_consent_row_but_not_to_a_suppressed_number(pool, fakes: FakeProviders, messaging):
    order = await customer(pool, marketing=None)
    phone = order["customer"]["phone"]
    assert await pool.fetchval("SELECT count(*) FROM consent WHERE customer_id = $1", order["customer"]["customer_id"]) == 0
    assert (await send(messaging, order_message(order, Touchpoint.ORDER_CONFIRMATION))).state is DeliveryState.SENT
    assert (await send(messaging, order_message(order, Touchpoint.PAYMENT_REMINDER, Channel.SMS))).state is DeliveryState.SENT
    async with pool.acquire() as conn:
        await consent.suppress(conn, Channel.SMS, phone, reason="carrier reported unreachable", source="operator")
    request = order_message(
        order, Touchpoint.DISPATCH_NOTICE, Channel.SMS, carrier="DHL", tracking_number="T1", expected_delivery="2026-12-01"
    )
    outcome = await send(messaging, request)
    assert outcome.state is DeliveryState.NOT_PERMITTED
    assert outcome.error == "sms recipient suppressed: carrier reported unreachable" and phone not in outcome.error
    assert len(sms_posts_to(fakes, phone)) == 1  # the reminder only
    assert (await ledger(pool, request.key))["state"] == "not_permitted"


async def test_the_refusal_gives_each_reason_in_its_order(pool):
    """PostgreSQL's message_refusal, the one home of the rule: the customer
    erased first, then a suppression, then consent (none: transactional
    goes, marketing does not)."""
    order = await customer(pool)
    cid, email = order["customer"]["customer_id"], order["customer"]["email"]

    async def refusal(klass: MessageClass) -> str | None:
        return await consent.refusal(pool, cid, klass, Channel.EMAIL, email)

    assert (await refusal(MessageClass.TRANSACTIONAL), await refusal(MessageClass.MARKETING)) == (None, "no marketing consent on email")
    await set_marketing(pool, cid, Channel.EMAIL, True)
    async with pool.acquire() as conn:
        await consent.set_consent(conn, cid, MessageClass.TRANSACTIONAL, Channel.EMAIL, False, source="operator")
    assert await refusal(MessageClass.MARKETING) is None
    assert await refusal(MessageClass.TRANSACTIONAL) == "customer prefers no email for order messages"
    async with pool.acquire() as conn:
        await consent.suppress(conn, Channel.EMAIL, email, reason="hard bounce", source="provider")
    assert {await refusal(k) for k in MessageClass} == {"email recipient suppressed: hard bounce"}
    async with pool.acquire() as conn:
        await erasure.forget(conn, cid, "dpo")
    assert {await refusal(k) for k in MessageClass} == {CUSTOMER_ERASED}


@pytest.mark.parametrize(
    "refusal, reason",
    [
        ("suppressed", "email recipient suppressed: hard bounce"),
        ("opted out", "customer prefers no email for order messages"),
        ("erased", CUSTOMER_ERASED),
    ],
)
async def test_a_refused_first_send_is_decided_and_recorded_by_one_statement(
    pool, database_url, fakes: FakeProviders, provider_config, caplog, refusal, reason
):
    """A new order message the worker can render (it holds the order): the
    statement that would register it reads the refusal and registers it
    'not_permitted' instead, without its rendering; for an erased customer,
    nothing. Sent again once permitted, it is registered anew and goes."""
    async with logging_statements(database_url) as (workers_pool, statements):
        order = await customer(pool)
        cid, email = order["customer"]["customer_id"], order["customer"]["email"]
        messaging = MessagingActivities(workers_pool, provider_config)
        assert (await send(messaging, order_message(order, Touchpoint.ORDER_CONFIRMATION, Channel.SMS))).state is DeliveryState.SENT
        async with pool.acquire() as conn:
            if refusal == "suppressed":
                await consent.suppress(conn, Channel.EMAIL, email, reason="hard bounce", source="provider")
            elif refusal == "opted out":
                await consent.set_consent(conn, cid, MessageClass.TRANSACTIONAL, Channel.EMAIL, False, source="operator")
            else:
                await erasure.forget(conn, cid, "dpo")
        statements.clear()
        request = order_message(order, Touchpoint.ORDER_CONFIRMATION)
        caplog.set_level(logging.INFO, logger="activities.messaging")
        outcome = await send(messaging, request)
        assert len(statements) == 1, "\n---\n".join(statements)
        told = [r.getMessage() for r in caplog.records if r.name == "activities.messaging"]
        assert told == [f"{request.key} not sent: {reason}"]
        assert (outcome.state, outcome.error) == (DeliveryState.NOT_PERMITTED, reason)
        assert mails_to(fakes, email) == []
        row = await pool.fetchrow(
            "SELECT state, error, attempts, message_class, recipient, subject, body_text, body_html, headers, claim_token"
            " FROM message_ledger WHERE key = $1",
            request.key,
        )
        if refusal == "erased":
            assert row is None
            return
        assert (row["state"], row["error"], row["attempts"], row["message_class"]) == ("not_permitted", reason, 0, "transactional")
        assert row["recipient"] == email
        assert (row["subject"], row["body_text"], row["body_html"], row["headers"], row["claim_token"]) == (None,) * 5

        async with pool.acquire() as conn:
            if refusal == "suppressed":
                await consent.lift_suppression(conn, Channel.EMAIL, email)
            else:
                await consent.set_consent(conn, cid, MessageClass.TRANSACTIONAL, Channel.EMAIL, True, source="operator")
        assert (await send(messaging, request)).state is DeliveryState.SENT
    row = await ledger(pool, request.key)
    assert (row["state"], row["error"], row["attempts"]) == ("sent", None, 1)
    assert len(mails_to(fakes, email)) == 1


@pytest.mark.parametrize("suppressed_meanwhile", [False, True])
async def test_a_first_attempt_at_a_row_left_pending_claims_it_or_refuses_it(
    pool, fakes: FakeProviders, messaging, suppressed_meanwhile
):
    """The row exists (an attempt found SendGrid unavailable, so nothing went
    out) when a first attempt at the same key comes, as after a non-retryable
    error: registering meets it, and it is claimed and sent as it was
    rendered, or, the address suppressed meanwhile, refused."""
    order = await customer(pool)
    email = order["customer"]["email"]
    fakes.fail_next(email, 503)
    request = order_message(order, Touchpoint.ORDER_CONFIRMATION)
    with pytest.raises(ApplicationError):
        await send(messaging, request)
    assert (await ledger(pool, request.key))["state"] == "pending"
    if suppressed_meanwhile:
        async with pool.acquire() as conn:
            await consent.suppress(conn, Channel.EMAIL, email, reason="hard bounce", source="provider")
    outcome = await send(messaging, request)
    row = await ledger(pool, request.key)
    if suppressed_meanwhile:
        assert (outcome.state, outcome.error) == (DeliveryState.NOT_PERMITTED, "email recipient suppressed: hard bounce")
        assert (row["state"], row["error"], row["attempts"]) == ("not_permitted", outcome.error, 1)
        assert len(mails_to(fakes, email)) == 1  # the one refused with 503
    else:
        assert outcome.state is DeliveryState.SENT
        assert (row["state"], row["attempts"]) == ("sent", 2)
        first, second = mails_to(fakes, email)
        assert content(first, "text/plain") == content(second, "text/plain")


async def test_marketing_sms_is_not_sent_because_email_was_refused(pool, fakes: FakeProviders, messaging):
    """No consent on SMS is assumed from anything: the workflow's fallback to
    SMS after a refused email meets its own refusal."""
    order = await customer(pool, marketing={"email": False})
    phone = order["customer"]["phone"]
    details = coupon()
    by_email = await send(messaging, journey_message(order, Touchpoint.WIN_BACK, **details))
    by_sms = await send(messaging, journey_message(order, Touchpoint.WIN_BACK, Channel.SMS, **details))
    assert (by_email.state, by_sms.state) == (DeliveryState.NOT_PERMITTED, DeliveryState.NOT_PERMITTED)
    assert by_sms.error == "no marketing consent on sms"
    assert requests_to(fakes, order["customer"]["email"]) == [] and requests_to(fakes, phone) == []
    # With SMS consent it goes, naming its coupon and saying how to opt out.
    await set_marketing(pool, order["customer"]["customer_id"], Channel.SMS, True)
    assert (await send(messaging, journey_message(order, Touchpoint.WIN_BACK_REMINDER, Channel.SMS, **details))).state is DeliveryState.SENT
    [text] = fakes.deliveries_to(phone)
    assert details["coupon_code"] in text and text.endswith("Reply STOP to opt out.")


@pytest.mark.parametrize(
    "answer, row_between, final",
    [
        # Nothing went out: the 'pending' row is not claimed once consent is gone.
        (503, "pending", DeliveryState.NOT_PERMITTED),
        # SendGrid accepted it before its gateway gave up: a withdrawal does not un-send it.
        (502, "sending", DeliveryState.IN_DOUBT),
    ],
)
async def test_consent_withdrawn_between_two_attempts(pool, fakes: FakeProviders, messaging, answer, row_between, final):
    order = await customer(pool, marketing={"email": True})
    email = order["customer"]["email"]
    fakes.fail_next(email, answer)
    request = journey_message(order, Touchpoint.WIN_BACK)
    with pytest.raises(ApplicationError):
        await send(messaging, request)
    assert (await ledger(pool, request.key))["state"] == row_between
    await set_marketing(pool, request.customer_id, Channel.EMAIL, False)
    assert (await send(messaging, request, number=2)).state is final
    assert (await ledger(pool, request.key))["state"] == final.value
    assert len(mails_to(fakes, email)) == 1  # the first attempt's only


# --- the marketing frequency cap ------------------------------------------------------


async def test_the_third_marketing_message_in_the_window_is_deferred_until_a_slot_frees(pool, fakes: FakeProviders, messaging):
    order = await customer(pool, marketing={"email": True})
    email = order["customer"]["email"]
    first, second, third = (journey_message(order, kind) for kind in (Touchpoint.WELCOME, Touchpoint.LOYALTY_REWARD, Touchpoint.WIN_BACK))
    assert (await send(messaging, first)).state is DeliveryState.SENT
    assert (await send(messaging, second)).state is DeliveryState.SENT
    await pool.execute("UPDATE message_ledger SET created_at = created_at - interval '3 days' WHERE key = $1", first.key)
    oldest = (await ledger(pool, first.key))["created_at"]

    outcome = await send(messaging, third)
    assert outcome.state is DeliveryState.DEFERRED
    assert outcome.not_before == oldest + timedelta(days=7)
    assert await ledger(pool, third.key) is None
    assert len(mails_to(fakes, email)) == 2
    # Transactional messages are not capped, and do not count.
    assert (await send(messaging, order_message(order, Touchpoint.ORDER_CONFIRMATION))).state is DeliveryState.SENT

    # Once the oldest has left the window, the same message (same key) goes.
    await pool.execute("UPDATE message_ledger SET created_at = created_at - interval '5 days' WHERE key = $1", first.key)
    assert (await send(messaging, third)).state is DeliveryState.SENT
    assert len(mails_to(fakes, email)) == 4


async def test_concurrent_marketing_sends_for_one_customer_never_pass_the_cap_together(pool, fakes: FakeProviders, messaging):
    order = await customer(pool, marketing={"email": True, "sms": True})
    requests = [
        journey_message(order, kind, channel)
        for kind in (Touchpoint.WELCOME, Touchpoint.LOYALTY_REWARD, Touchpoint.WIN_BACK)
        for channel in (Channel.EMAIL, Channel.SMS)
    ]
    outcomes = await asyncio.gather(*(send(messaging, r) for r in requests))
    states = sorted(o.state.value for o in outcomes)
    assert states == ["deferred"] * 4 + ["sent"] * 2
    registered = await pool.fetchval(
        "SELECT count(*) FROM message_ledger WHERE customer_id = $1 AND message_class = 'marketing'", requests[0].customer_id
    )
    assert registered == 2
    assert len(fakes.deliveries_to(order["customer"]["email"]) + fakes.deliveries_to(order["customer"]["phone"])) == 2


async def test_a_marketing_send_counts_the_cap_and_registers_in_one_statement(database_url, fakes: FakeProviders, provider_config):
    """Lock, count and register are one round trip (migration 022), not a
    transaction of five: with the customer's contact details and consent read
    before and the answer recorded after, four statements in all."""
    async with logging_statements(database_url) as (pool, statements):
        order = await customer(pool, marketing={"email": True})
        messaging = MessagingActivities(pool, provider_config)
        await send(messaging, journey_message(order, Touchpoint.WELCOME))  # asyncpg learns the types
        statements.clear()
        outcome = await send(messaging, journey_message(order, Touchpoint.LOYALTY_REWARD))
    assert outcome.state is DeliveryState.SENT
    assert len(statements) == 4, "\n---\n".join(statements)


async def test_a_marketing_send_waiting_on_the_customer_s_lock_holds_nothing_else_then_counts_what_the_holder_registered(
    pool, fakes: FakeProviders, provider_config
):
    """While it waits for the customer's marketing lock, the send holds no
    lock on the customer's row (an erasure or an order's recording goes on);
    then it counts after the lock, so it sees a message registered by whoever
    held it meanwhile, however early the send's own statement began."""
    messaging = MessagingActivities(pool, dataclasses.replace(provider_config, marketing_cap=1, marketing_cap_window=timedelta(hours=1)))
    order = await customer(pool, marketing={"email": True})
    customer_id = order["customer"]["customer_id"]
    waiting = """
    SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted
                   AND objid::bigint = hashtext('marketing:' || $1)::bigint & 4294967295)
    """
    async with pool.acquire() as holder, holder.transaction():
        await holder.execute("SELECT pg_advisory_xact_lock(hashtext('marketing:' || $1))", customer_id)
        sending = asyncio.create_task(send(messaging, journey_message(order, Touchpoint.LOYALTY_REWARD)))
        async with asyncio.timeout(10):
            while not sending.done() and not await pool.fetchval(waiting, customer_id):
                await asyncio.sleep(0.01)
        assert not sending.done(), "the send did not wait for the customer's lock"
        async with pool.acquire() as other, other.transaction():
            await other.execute("SET LOCAL lock_timeout = '2s'")
            await other.execute("UPDATE customers SET updated_at = now() WHERE customer_id = $1", customer_id)
        await holder.execute(
            """
            INSERT INTO message_ledger (key, customer_id, message_class, kind, channel, recipient, provider, state)
            VALUES ($1, $2, 'marketing', 'welcome', 'email', 'elsewhere@example.com', 'sendgrid', 'sent')
            """,
            f"registered-by-the-holder-{uuid.uuid4().hex}",
            customer_id,
        )
    outcome = await sending
    assert outcome.state is DeliveryState.DEFERRED
    assert mails_to(fakes, order["customer"]["email"]) == []


async def test_the_cap_comes_from_the_configuration(pool, fakes: FakeProviders, provider_config):
    messaging = MessagingActivities(pool, dataclasses.replace(provider_config, marketing_cap=1, marketing_cap_window=timedelta(hours=1)))
    order = await customer(pool, marketing={"email": True})
    first = journey_message(order, Touchpoint.WELCOME)
    assert (await send(messaging, first)).state is DeliveryState.SENT
    outcome = await send(messaging, journey_message(order, Touchpoint.LOYALTY_REWARD))
    assert outcome.state is DeliveryState.DEFERRED
    assert outcome.not_before == (await ledger(pool, first.key))["created_at"] + timedelta(hours=1)


# --- unsubscribing ------------------------------------------------------------------------


def unsubscribe_token(header: str) -> tuple[str, str]:
    """The tokens of the link and of the mailto in a List-Unsubscribe header."""
    link, mailto = re.fullmatch(r"<([^>]+)>, <([^>]+)>", header).groups()
    assert link.startswith("https://shop.example/unsubscribe?token=")
    assert mailto.startswith("mailto:unsubscribe@shop.example?subject=unsubscribe%20")
    return parse_qs(urlparse(link).query)["token"][0], mailto.rpartition("%20")[2]


async def test_marketing_email_carries_rfc8058_headers_and_a_visible_link(pool, fakes: FakeProviders, provider_config, messaging):
    order = await customer(pool, marketing={"email": True})
    email, cid = order["customer"]["email"], order["customer"]["customer_id"]
    request = journey_message(order, Touchpoint.WIN_BACK)
    assert (await send(messaging, request)).state is DeliveryState.SENT
    [mail] = mails_to(fakes, email)
    headers = mail.json["headers"]
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    token, mailto_token = unsubscribe_token(headers["List-Unsubscribe"])
    assert token == mailto_token
    claim = unsubscribe_tokens.verify(token, provider_config.unsubscribe_secret)
    assert (claim.customer_id, claim.channel) == (cid, Channel.EMAIL)
    with pytest.raises(unsubscribe_tokens.InvalidToken):
        unsubscribe_tokens.verify(token, "another secret")
    link = f"https://shop.example/unsubscribe?token={token}"
    assert f"Unsubscribe from these emails: {link}" in content(mail, "text/plain")
    assert f'<a href="{link}">' in content(mail, "text/html")
    # Part of the stored rendering.
    assert json.loads((await ledger(pool, request.key))["headers"]) == headers
    # A transactional mail has neither.
    assert (await send(messaging, order_message(order, Touchpoint.ORDER_CONFIRMATION))).state is DeliveryState.SENT
    confirmation = mails_to(fakes, email)[1]
    assert "headers" not in confirmation.json and "unsubscribe" not in content(confirmation, "text/plain").lower()


async def test_a_retry_sends_the_unsubscribe_headers_first_rendered(pool, fakes: FakeProviders, messaging):
    """A re-rendering a second later would sign a token with another expiry."""
    order = await customer(pool, marketing={"email": True})
    email = order["customer"]["email"]
    fakes.fail_next(email, 429)
    request = journey_message(order, Touchpoint.WIN_BACK)
    with pytest.raises(ApplicationError):
        await send(messaging, request)
    await asyncio.sleep(1.1)
    assert (await send(messaging, request, number=2)).state is DeliveryState.SENT
    first, second = mails_to(fakes, email)
    assert first.json["headers"] == second.json["headers"]
    assert content(first, "text/plain") == content(second, "text/plain")


async def test_no_marketing_email_without_an_unsubscribe_secret(pool, fakes: FakeProviders, provider_config):
    messaging = MessagingActivities(pool, dataclasses.replace(provider_config, unsubscribe_secret=None))
    order = await customer(pool, marketing={"email": True})
    request = journey_message(order, Touchpoint.WELCOME)
    with pytest.raises(ApplicationError) as raised:
        await send(messaging, request)
    assert raised.value.type == "UnsubscribeNotConfigured" and raised.value.non_retryable
    assert "UNSUBSCRIBE_SECRET" in raised.value.message
    assert requests_to(fakes, order["customer"]["email"]) == []
    assert await ledger(pool, request.key) is None
    assert (await send(messaging, order_message(order, Touchpoint.ORDER_CONFIRMATION))).state is DeliveryState.SENT


# --- Twilio 21610: the number replied STOP ----------------------------------------------


def test_twilio_21610_is_an_opt_out_in_either_error_format():
    legacy = TwilioRestException(400, "/2010-04-01/Accounts/AC1/Messages.json", "Attempt to send to unsubscribed recipient", 21610)
    problem = TwilioServiceException("https://www.twilio.com/docs/errors/21610", "Unsubscribed recipient", 400, 21610)
    other = TwilioRestException(400, "/2010-04-01/Accounts/AC1/Messages.json", "Invalid 'To' Phone Number", 21211)
    assert (classify(legacy), classify(problem), classify(other)) == (Verdict.OPTED_OUT, Verdict.OPTED_OUT, Verdict.REFUSED)


async def test_twilio_21610_suppresses_the_number_and_nothing_more_goes_there(pool, fakes: FakeProviders, messaging):
    order = await customer(pool, marketing=None)
    phone = order["customer"]["phone"]
    fakes.opt_out(phone)
    notice = order_message(
        order, Touchpoint.DISPATCH_NOTICE, Channel.SMS, carrier="DHL", tracking_number="T21610", expected_delivery="2026-12-01"
    )
    outcome = await send(messaging, notice)
    assert outcome.state is DeliveryState.NOT_PERMITTED
    assert "21610" in outcome.error and phone not in outcome.error
    assert (await ledger(pool, notice.key))["state"] == "not_permitted"
    suppression = await pool.fetchrow("SELECT reason, source FROM suppressions WHERE channel = 'sms' AND recipient = $1", phone)
    assert tuple(suppression) == ("twilio 21610", "provider")
    # A later transactional SMS to that number: refused without a request.
    later = order_message(order, Touchpoint.ORDER_CANCELLED, Channel.SMS, reason="out of stock")
    refused = await send(messaging, later)
    assert refused.state is DeliveryState.NOT_PERMITTED
    assert refused.error == "sms recipient suppressed: twilio 21610"
    assert len(sms_posts_to(fakes, phone)) == 1


# --- the customer's journey: no order -----------------------------------------------------


async def test_a_customer_journey_message_is_written_to_the_customer_as_stored_now(pool, fakes: FakeProviders, messaging):
    """Contact details change after the order: a message of the customer's
    journey reads them from `customers` when it is sent."""
    order = await customer(pool, marketing={"email": True})
    cid = order["customer"]["customer_id"]
    new_email = f"new.{uuid.uuid4().hex[:8]}@example.com"
    await pool.execute(
        "UPDATE customers SET email = $2, name = 'Grace <Hopper>', timezone = 'America/New_York' WHERE customer_id = $1",
        cid,
        new_email,
    )
    details = coupon()
    request = journey_message(order, Touchpoint.WIN_BACK, **details)
    assert (await send(messaging, request)).state is DeliveryState.SENT
    assert mails_to(fakes, order["customer"]["email"]) == []
    [mail] = mails_to(fakes, new_email)
    assert mail.json["subject"] == "We miss you, Grace <Hopper>"
    html_part, text = content(mail, "text/html"), content(mail, "text/plain")
    assert "Grace &lt;Hopper&gt;" in html_part and "<Hopper>" not in html_part
    # 23:30 UTC on 31 December is 18:30 in New York.
    assert f"15% off with code {details['coupon_code']}, valid until Thu 31 Dec 2026, 18:30 EST" in text
    row = await ledger(pool, request.key)
    assert (row["order_id"], row["customer_id"], row["message_class"], row["recipient"]) == (None, cid, "marketing", new_email)


async def test_a_customer_journey_message_for_an_unknown_customer_is_retried(pool, fakes: FakeProviders, messaging):
    request = MessageRequest(
        key=str(LedgerKey(customer_workflow_id("nobody"), Touchpoint.WELCOME, Channel.EMAIL, occasion="first")),
        kind=Touchpoint.WELCOME, channel=Channel.EMAIL, customer_id=f"nobody-{uuid.uuid4().hex}"
    )
    with pytest.raises(ApplicationError) as raised:
        await send(messaging, request)
    assert raised.value.type == "CustomerNotRecorded" and not raised.value.non_retryable
