"""The right to erasure in PostgreSQL and at send time (store/erasure.py):
a forgotten customer's rows hold none of their data, a second customer is
untouched, a STOP survives, nothing more is sent, and a repeat is harmless."""

from __future__ import annotations

import dataclasses
import json
import uuid
from typing import Any

import asyncpg
import pytest

from activities.messaging import MessagingActivities
from store import consent, erasure, provider_events
from tests.conftest import new_order, store
from tests.fake_providers import FakeProviders
from tests.test_consent_sending import journey_message, order_message, send, sms_posts_to
from workflows.models import Channel, DeliveryState, Touchpoint

# The customer's words; each customer's own (words(order)).
COMMENT = "The parcel was left at my neighbour Zbigniew's flat"
COMPLAINT = "Nobody answered my calls about order, very unhappy Wiesława"
REOPEN = "Still broken, call me on my mobile please"


def words(order: dict[str, Any]) -> tuple[str, str, str]:
    return tuple(f"{text} ({order['customer']['name']})" for text in (COMMENT, COMPLAINT, REOPEN))


@pytest.fixture
def outbox_messaging(pool: asyncpg.Pool, provider_config) -> MessagingActivities:
    """No provider credentials: every message goes to the outbox table."""
    config = dataclasses.replace(provider_config, sendgrid_api_key=None, twilio_account_sid=None, twilio_auth_token=None)
    return MessagingActivities(pool, config)


async def a_customer_with_history(pool: asyncpg.Pool, messaging: MessagingActivities, **customer: Any) -> dict[str, Any]:
    """A customer with an order, messages in the ledger and the outbox, a
    feedback comment, a vote comment, a case with a complaint and a reopen
    comment, and the feedback's signal kept for the relay."""
    order = new_order()
    order["customer"].update(name=f"Ada {uuid.uuid4().hex[:8]}", **customer)
    order["delivery"]["address"]["line1"] = f"Ulica Kwiatowa {uuid.uuid4().hex[:6]}"
    await store(pool, order)
    oid, cid = order["order_id"], order["customer"]["customer_id"]
    comment, complaint, reopen = words(order)
    confirmation = order_message(order, Touchpoint.ORDER_CONFIRMATION)
    assert (await send(messaging, confirmation)).state is DeliveryState.SENT
    assert (await send(messaging, order_message(order, Touchpoint.PAYMENT_REMINDER, Channel.SMS))).state is DeliveryState.SENT
    async with pool.acquire() as conn:
        await conn.execute(
            "INSERT INTO feedback (order_id, customer_id, seller_id, skus, item_rating, seller_rating, comment)"
            " VALUES ($1, $2, 'S1', ARRAY['MOUSE-1'], 2, 3, $3)",
            oid, cid, comment,
        )
        await conn.execute(
            "INSERT INTO message_votes (ledger_key, order_id, kind, channel, helpful, comment) VALUES ($1, $2, 'order_confirmation', 'email', false, $3)",
            confirmation.key, oid, comment,
        )
        await conn.execute(
            "INSERT INTO cases (case_id, order_id, n, trigger, trigger_key, customer_id, seller_id, text, reopen_comment, resolution)"
            " VALUES ($1, $2, 1, 'complaint', $3, $4, 'S1', $5, $6, $7)",
            f"case-{oid}-1", oid, f"trigger-{oid}", cid, complaint, reopen, f"Dear {order['customer']['name']}, refunded",
        )
        await provider_events.owe(
            conn, f"feedback:{oid}",
            provider_events.Signal(f"order-{oid}", "feedback_submitted", {"item_rating": 2, "seller_rating": 3, "comment": comment}),
        )
        await provider_events.owe(
            conn, f"case:{oid}",
            provider_events.Signal(f"case-{oid}-1", "case_opened", {"case_id": f"case-{oid}-1", "text": complaint}, "CaseWorkflow"),
        )
    return order


def personal_data(order: dict[str, Any]) -> list[str]:
    c = order["customer"]
    return [c["name"], c["email"], c["phone"], order["delivery"]["address"]["line1"], *words(order)]


async def where_found(pool: asyncpg.Pool, needles: list[str]) -> list[tuple[str, str, str]]:
    """(table, column, needle) for every text, varchar, text[] or jsonb column of every table holding a needle."""
    columns = await pool.fetch(
        """
        SELECT table_name, column_name FROM information_schema.columns
        WHERE table_schema = 'public' AND data_type IN ('text', 'character varying', 'jsonb', 'ARRAY')
          AND table_name IN (SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE')
        """
    )
    found = []
    for col in columns:
        for needle in needles:
            hit = await pool.fetchval(
                f'SELECT EXISTS (SELECT 1 FROM "{col["table_name"]}" WHERE strpos("{col["column_name"]}"::text, $1) > 0)', needle
            )
            if hit:
                found.append((col["table_name"], col["column_name"], needle))
    return found


async def forget(pool: asyncpg.Pool, customer_id: str, by: str = "dpo@shop.example") -> erasure.Forgotten:
    async with pool.acquire() as conn:
        return await erasure.forget(conn, customer_id, by)


async def test_a_forgotten_customer_s_rows_hold_none_of_their_data_and_another_customer_is_untouched(pool, outbox_messaging):
    forgotten = await a_customer_with_history(pool, outbox_messaging)
    other = await a_customer_with_history(pool, outbox_messaging)
    assert await where_found(pool, personal_data(forgotten))  # the search finds what is there

    done = await forget(pool, forgotten["customer"]["customer_id"])

    assert await where_found(pool, personal_data(forgotten)) == []
    # The other customer's data is all where it was.
    found = {needle for _, _, needle in await where_found(pool, personal_data(other))}
    assert found == set(personal_data(other))
    assert await pool.fetchval("SELECT comment FROM feedback WHERE order_id = $1", other["order_id"]) == words(other)[0]
    # What metrics need stays, anonymous.
    oid = forgotten["order_id"]
    row = await pool.fetchrow("SELECT o.total, f.item_rating, f.seller_rating FROM orders o JOIN feedback f USING (order_id) WHERE order_id = $1", oid)
    assert (str(row["total"]), row["item_rating"], row["seller_rating"]) == ("110.000", 2, 3)
    assert await pool.fetchval("SELECT count(*) FROM message_ledger WHERE order_id = $1 AND state = 'sent'", oid) == 2
    assert await pool.fetchval("SELECT count(*) FROM cases WHERE order_id = $1", oid) == 1
    # The log: counts, no personal data, not even the customer id in clear.
    receipt = done.receipt
    assert done.new and receipt.completed_at is None
    assert receipt.erased["customers"] == 1 and receipt.erased["message_ledger"] == 2 and receipt.erased["outbox"] == 2
    assert receipt.erased["feedback"] == receipt.erased["message_votes"] == receipt.erased["cases"] == 1
    assert receipt.erased["provider_events"] == 2
    logged = await pool.fetchrow("SELECT * FROM erasures WHERE receipt_id = $1", receipt.receipt_id)
    assert forgotten["customer"]["customer_id"] not in json.dumps({k: str(v) for k, v in dict(logged).items()})
    # The stored order still reads as an order.
    from workflows.models import OrderInput

    document = await pool.fetchval("SELECT document FROM orders WHERE order_id = $1", oid)
    assert OrderInput.model_validate_json(document).customer.name == erasure.ERASED_NAME


async def test_a_stop_survives_erasure_and_a_new_customer_at_that_number_gets_no_sms(pool, fakes: FakeProviders, provider_config):
    messaging = MessagingActivities(pool, provider_config)
    erased = new_order()
    phone = erased["customer"]["phone"]
    await store(pool, erased)
    async with pool.acquire() as conn:
        await consent.suppress(conn, Channel.SMS, phone, reason="STOP keyword", source="sms_keyword")
    done = await forget(pool, erased["customer"]["customer_id"])
    assert done.receipt.erased["suppressions"] == 1
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE recipient = $1", phone) == 0

    newcomer = new_order()
    newcomer["customer"]["phone"] = phone
    await store(pool, newcomer)
    request = order_message(
        newcomer, Touchpoint.DISPATCH_NOTICE, Channel.SMS, carrier="DHL", tracking_number="T1", expected_delivery="2026-12-01"
    )
    outcome = await send(messaging, request)
    assert outcome.state is DeliveryState.NOT_PERMITTED
    assert outcome.error == "sms recipient suppressed: STOP keyword"
    assert sms_posts_to(fakes, phone) == []
    # START from that number lifts it, hashed or not.
    async with pool.acquire() as conn:
        assert await consent.lift_suppression(conn, Channel.SMS, phone)
    assert (await send(messaging, request, number=2)).state is DeliveryState.SENT


async def test_nothing_more_is_sent_to_a_forgotten_customer(pool, fakes: FakeProviders, provider_config):
    messaging = MessagingActivities(pool, provider_config)
    order = new_order()
    order["customer"]["marketing_consent"] = {"email": True, "sms": True}
    await store(pool, order)
    email = order["customer"]["email"]
    # The worker has the order's document in memory from an earlier send.
    assert (await send(messaging, order_message(order, Touchpoint.ORDER_CONFIRMATION))).state is DeliveryState.SENT
    await forget(pool, order["customer"]["customer_id"])

    for request in (
        order_message(order, Touchpoint.PAYMENT_REMINDER),
        order_message(order, Touchpoint.PAYMENT_REMINDER, Channel.SMS),
        journey_message(order, Touchpoint.WELCOME),
    ):
        outcome = await send(messaging, request)
        assert (outcome.state, outcome.error) == (DeliveryState.NOT_PERMITTED, erasure.CUSTOMER_ERASED)
    assert [r for r in list(fakes.requests) if email in r.body.decode() or order["customer"]["phone"] in r.body.decode()] == [
        r for r in list(fakes.requests) if r.path == "/v3/mail/send" and email in r.body.decode()
    ][:1]
    assert await where_found(pool, [email, order["customer"]["phone"]]) == []


async def test_a_second_request_gets_the_first_receipt_and_a_returning_customer_is_forgotten_again(pool, outbox_messaging):
    order = await a_customer_with_history(pool, outbox_messaging)
    cid = order["customer"]["customer_id"]
    first = await forget(pool, cid)
    again = await forget(pool, cid, by="someone else")
    assert (again.new, again.receipt.receipt_id, again.owed_event_ids) == (False, first.receipt.receipt_id, [])
    # The customer orders again under the same id: a new erasure finds the new data.
    comeback = new_order(customer={**order["customer"], "name": "Ada Again"})
    await store(pool, comeback)
    assert await pool.fetchval("SELECT erased_at FROM customers WHERE customer_id = $1", cid) is None
    third = await forget(pool, cid)
    assert third.new and third.receipt.receipt_id != first.receipt.receipt_id
    assert await where_found(pool, ["Ada Again", order["customer"]["email"]]) == []


async def test_the_erasure_owes_its_workflows_a_signal(pool, outbox_messaging):
    order = await a_customer_with_history(pool, outbox_messaging)
    cid = order["customer"]["customer_id"]
    done = await forget(pool, cid)
    rows = await pool.fetch(
        "SELECT workflow_id, signal_name FROM provider_events WHERE event_id = ANY($1::text[]) AND signalled_at IS NULL",
        done.owed_event_ids,
    )
    assert sorted((r["workflow_id"], r["signal_name"]) for r in rows) == [
        (f"customer-{cid}", "customer_erased"),
        (f"order-{order['order_id']}", "customer_erased"),
    ]
    assert await erasure.pending_signals(pool, done.receipt.receipt_id) == 2
