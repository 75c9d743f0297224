"""The right to erasure in PostgreSQL and at send time (store/erasure.py):
a forgotten customer's rows hold none of their data, a second customer is
untouched, a STOP survives, nothing more is sent, and a repeat is harmless."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import uuid
from typing import Any, Coroutine, TypeVar

import asyncpg
import pytest

from activities.messaging import MessagingActivities
from store import consent, erasure, provider_events
from tests.conftest import new_order, store
from tests.fake_providers import FakeProviders
from tests.test_consent_sending import journey_message, order_message, send, sms_posts_to
from workflows.models import Channel, DeliveryState, MessageClass, Touchpoint

T = TypeVar("T")

# The customer's words; each customer's own (words(order)).
COMMENT = "The parcel was left at my neighbour Zbigniew's flat"
COMPLAINT = "Nobody answered my calls about order, very unhappy Wiesława"
REOPEN = "Still broken, call me on my mobile please"


def words(order: dict[str, Any]) -> tuple[str, str, str]:
    return tuple(f"{text} ({order['customer']['name']})" for text in (COMMENT, COMPLAINT, REOPEN))


# Erasures here owe workflows signals that no relay delivers.
pytestmark = pytest.mark.usefixtures("no_owed_signals_left")


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
        (f"case-{order['order_id']}-1", "customer_erased"),
        (f"customer-{cid}", "customer_erased"),
        (f"order-{order['order_id']}", "customer_erased"),
    ]
    assert await erasure.pending_signals(pool, done.receipt.receipt_id) == 3
    # A case already closed is not told again: a new order's erasure tells its own workflows.
    await pool.execute("UPDATE cases SET status = 'closed', closed_reason = 'customer erased' WHERE order_id = $1", order["order_id"])
    await store(pool, new_order(customer=order["customer"]))
    again = await forget(pool, cid)
    told = await pool.fetch("SELECT workflow_id FROM provider_events WHERE event_id = ANY($1::text[])", again.owed_event_ids)
    assert f"case-{order['order_id']}-1" not in {r["workflow_id"] for r in told} and len(told) == 3


async def test_the_cancellation_reason_the_locker_and_the_consent_audit_s_details_are_scrubbed_and_their_counts_stay(pool):
    from store.orders import CANCEL

    order = new_order()
    uid = uuid.uuid4().hex[:8]
    order["delivery"] = {"method": "locker", "locker_id": f"WAW-{uid}", "locker_name": f"Paczkomat Kwiatowa {uid}"}
    await store(pool, order)
    oid, cid = order["order_id"], order["customer"]["customer_id"]
    reason, detail = f"Moving to my sister's in Gdańsk {uid}", f"asked by phone, Ada {uid}"
    async with pool.acquire() as conn:
        await conn.execute(CANCEL, oid, reason)
        assert await consent.set_consent(conn, cid, MessageClass.MARKETING, Channel.EMAIL, False, source="operator", detail=detail)
    needles = [f"WAW-{uid}", f"Paczkomat Kwiatowa {uid}", reason, detail]
    assert {needle for _, _, needle in await where_found(pool, needles)} == set(needles)

    await forget(pool, cid)

    assert await where_found(pool, needles) == []
    row = await pool.fetchrow("SELECT status, delivery_method, cancellation_reason, document FROM orders WHERE order_id = $1", oid)
    assert (row["status"], row["delivery_method"], row["cancellation_reason"]) == ("cancelled", "locker", erasure.ERASED_NAME)
    from workflows.models import OrderInput

    assert OrderInput.model_validate_json(row["document"]).delivery.method == "locker"
    audit = await pool.fetch("SELECT source, granted, detail FROM consent_audit WHERE customer_id = $1 ORDER BY id", cid)
    assert [(a["source"], a["granted"], a["detail"]) for a in audit][-1] == ("operator", False, None)


# --- the erasure salt ------------------------------------------------------------


def test_the_erasure_salt_comes_from_the_environment_or_a_file_and_is_required(tmp_path):
    from store.erasure_salt import SaltError, erasure_salt_from_env

    with pytest.raises(SaltError, match="ERASURE_SALT .or ERASURE_SALT_FILE. is required"):
        erasure_salt_from_env({})
    with pytest.raises(SaltError, match="at least 16 characters"):
        erasure_salt_from_env({"ERASURE_SALT": "short"})
    secret = tmp_path / "erasure-salt"
    secret.write_text("kept in a secret file\n")
    assert erasure_salt_from_env({"ERASURE_SALT_FILE": str(secret)}) == "kept in a secret file"
    with pytest.raises(SaltError, match="ERASURE_SALT_FILE: cannot read"):
        erasure_salt_from_env({"ERASURE_SALT_FILE": str(tmp_path / "none")})


def test_the_worker_and_the_http_service_refuse_to_start_without_the_erasure_salt():
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import TEST_KEY_ENV
    from web.config import ConfigError, WebConfig

    without = {k: v for k, v in TEST_KEY_ENV.items() if k != "ERASURE_SALT"}
    env = {k: v for k, v in os.environ.items() if not k.startswith("ERASURE_SALT")}
    env.update(without, DATABASE_URL="postgresql://nobody@127.0.0.1:1/none", METRICS_PORT="0")
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "worker.py"], cwd=repo, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert "error: ERASURE_SALT (or ERASURE_SALT_FILE) is required" in result.stderr, result.stderr
    with pytest.raises(ConfigError, match="ERASURE_SALT .or ERASURE_SALT_FILE. is required"):
        WebConfig.from_env({"UNSUBSCRIBE_SECRET": "s", **without})


async def test_no_database_dump_can_test_a_guessed_number_against_an_erased_customer_s_hash(pool, database_url):
    """What a dump holds (the salt migration 018 stored, the hashes) does not
    reproduce the hash of the number the customer said STOP from; the salt
    that does is in no table. A connection without it cannot hash at all."""
    import hashlib

    from store.database import create_pool
    from tests.conftest import TEST_ERASURE_SALT

    order = an_order_of_their_own()
    phone = order["customer"]["phone"]
    await store(pool, order)
    async with pool.acquire() as conn:
        await consent.suppress(conn, Channel.SMS, phone, reason="STOP keyword", source="sms_keyword")
    await forget(pool, order["customer"]["customer_id"])

    kept = await pool.fetchval("SELECT recipient FROM suppressions WHERE recipient LIKE 'erased:%' AND reason = 'STOP keyword' ORDER BY at DESC LIMIT 1")
    stored_salt = await pool.fetchval("SELECT salt FROM erasure_salt")
    from_the_dump = "erased:" + hashlib.sha256(f"{stored_salt}:sms:{phone}".encode()).hexdigest()
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE recipient = $1", from_the_dump) == 0
    assert kept != from_the_dump
    assert await where_found(pool, [TEST_ERASURE_SALT]) == []
    unsalted = await create_pool(database_url, max_size=1)
    try:
        with pytest.raises(asyncpg.RaiseError, match="ERASURE_SALT is not set"):
            await consent.refusal(unsalted, "C-anyone", MessageClass.TRANSACTIONAL, Channel.SMS, phone)
    finally:
        await unsalted.close()
    # With the salt, the STOP holds (test_a_stop_survives_erasure...).
    refused = await consent.refusal(pool, "C-anyone", MessageClass.TRANSACTIONAL, Channel.SMS, phone)
    assert refused == "sms recipient suppressed: STOP keyword"


async def test_hashes_made_with_the_stored_salt_are_re_hashed_at_start_up_and_keep_matching(pool, database_url):
    """Suppressions and erasure log rows hashed by migration 018's scheme (its
    stored salt) before ERASURE_SALT: the start-up re-hashes them in place,
    the STOP still holds, a repeated erasure still finds its first receipt;
    a start-up with another salt is refused."""
    from store.database import create_pool, migrate
    from store.erasure_salt import SaltError
    from tests.conftest import TEST_ERASURE_SALT

    order = an_order_of_their_own()
    phone, cid = order["customer"]["phone"], order["customer"]["customer_id"]
    await store(pool, order)
    receipt_id = f"er-{uuid.uuid4().hex}"
    async with pool.acquire() as conn:
        # As forget did before: the customer erased, their STOP and log row hashed with the stored salt.
        await conn.execute("UPDATE customers SET name = 'erased', email = '', phone = NULL, erased_at = now() WHERE customer_id = $1", cid)
        await conn.execute(
            "INSERT INTO suppressions (channel, recipient, reason, source) VALUES ('sms', erasure_hash_018('sms', $1), 'STOP keyword', 'sms_keyword')",
            phone,
        )
        await conn.execute(
            "INSERT INTO erasures (receipt_id, customer_hash, requested_by, completed_at) VALUES ($1, erasure_hash_018('customer', $2), 'dpo', now())",
            receipt_id, cid,
        )
    assert await consent.refusal(pool, "C-newcomer", MessageClass.TRANSACTIONAL, Channel.SMS, phone) is None  # not yet

    await migrate(database_url, TEST_ERASURE_SALT)  # the next start-up

    refused = await consent.refusal(pool, "C-newcomer", MessageClass.TRANSACTIONAL, Channel.SMS, phone)
    assert refused == "sms recipient suppressed: STOP keyword"
    assert (await forget(pool, cid)).receipt.receipt_id == receipt_id
    assert await pool.fetchval("SELECT count(*) FROM suppressions WHERE recipient ~ '^erased:[0-9a-f]{64}$'") == 0
    with pytest.raises(SaltError, match="not the one this database's erased customers were hashed with"):
        await migrate(database_url, "another salt, of another service")
    with pytest.raises(SaltError, match="not the one"):
        await create_pool(database_url, erasure_salt="another salt, of another service")


# --- the send in flight -----------------------------------------------------------


def an_order_of_their_own() -> dict[str, Any]:
    """An order whose name and address no other test's order has."""
    order = new_order()
    order["customer"]["name"] = f"Ada {uuid.uuid4().hex[:8]}"
    order["delivery"]["address"]["line1"] = f"Ulica Kwiatowa {uuid.uuid4().hex[:6]}"
    return order


def forgotten_just_before(pool: asyncpg.Pool, messaging: MessagingActivities, step: str, order: dict[str, Any], monkeypatch) -> None:
    """The customer is forgotten just before the send takes `step`, one of its methods."""
    original = getattr(messaging, step)

    async def forgotten_first(*args: Any) -> Any:
        await forget(pool, order["customer"]["customer_id"])
        return await original(*args)

    monkeypatch.setattr(messaging, step, forgotten_first)


async def test_a_send_claimed_before_the_erasure_and_recorded_after_it_stores_none_of_their_data(pool, outbox_messaging, monkeypatch):
    """Claim, forget, record: the message went out (the outbox stands in for
    the provider), but neither the ledger nor the outbox keeps its address or body."""
    order = an_order_of_their_own()
    await store(pool, order)
    forgotten_just_before(pool, outbox_messaging, "_to_outbox", order, monkeypatch)
    request = order_message(order, Touchpoint.ORDER_CONFIRMATION)
    outcome = await send(outbox_messaging, request)

    assert outcome.state is DeliveryState.SENT
    row = await pool.fetchrow("SELECT state, recipient, body_text, blanked_at FROM message_ledger WHERE key = $1", request.key)
    assert (row["state"], row["recipient"], row["body_text"]) == ("sent", "", None) and row["blanked_at"]
    outbox = await pool.fetchrow("SELECT recipient, subject, body FROM outbox WHERE ledger_key = $1", request.key)
    assert tuple(outbox) == ("", None, "")
    assert await where_found(pool, personal_data(order)) == []


async def test_a_send_the_erasure_overtakes_before_its_claim_is_refused_and_stores_nothing(pool, outbox_messaging, monkeypatch):
    """The attempt read the customer as not erased; the erasure commits before
    it registers the message: it registers nothing and sends nothing."""
    order = an_order_of_their_own()
    await store(pool, order)
    forgotten_just_before(pool, outbox_messaging, "_render", order, monkeypatch)  # which registers next
    request = order_message(order, Touchpoint.ORDER_CONFIRMATION)
    outcome = await send(outbox_messaging, request)

    assert (outcome.state, outcome.error) == (DeliveryState.NOT_PERMITTED, erasure.CUSTOMER_ERASED)
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE ledger_key = $1", request.key) == 0
    assert await where_found(pool, personal_data(order)) == []


async def test_a_refusal_the_erasure_overtakes_records_no_recipient(pool, outbox_messaging, monkeypatch):
    """Refused (no marketing consent on SMS), and the erasure commits between
    that reading and the refusal's record: the ledger row keeps no number."""
    order = an_order_of_their_own()
    await store(pool, order)
    read_refusal = outbox_messaging._refusal

    async def refused_then_forgotten(*args: Any) -> str | None:
        reason = await read_refusal(*args)
        await forget(pool, order["customer"]["customer_id"])
        return reason

    monkeypatch.setattr(outbox_messaging, "_refusal", refused_then_forgotten)
    request = journey_message(order, Touchpoint.WELCOME, Channel.SMS)
    outcome = await send(outbox_messaging, request)

    assert outcome.state is DeliveryState.NOT_PERMITTED
    assert await pool.fetchval("SELECT recipient FROM message_ledger WHERE key = $1", request.key) == ""
    assert await where_found(pool, personal_data(order)) == []


async def held_by_the_erasure(pool: asyncpg.Pool, order: dict[str, Any], step: Coroutine[Any, Any, T]) -> T:
    """Runs `step` while the customer's erasure is open in a transaction (not
    committed, so others do not see it yet): the step must wait at the
    customer's row, and finishes once the erasure commits."""
    async with pool.acquire() as conn:
        async with conn.transaction():
            await erasure.forget(conn, order["customer"]["customer_id"], "dpo")
            running = asyncio.create_task(step)
            await asyncio.sleep(1)
            assert not running.done()  # held at the customer's row
        return await asyncio.wait_for(running, 20)


async def test_a_send_that_registers_while_the_erasure_is_under_way_waits_for_it_and_stores_nothing(pool, outbox_messaging):
    """No monkeypatching: the erasure's transaction is open (the customer not
    erased yet as others see it) when the send reads the customer and
    registers; the registration waits for the erasure's commit, then refuses."""
    order = an_order_of_their_own()
    await store(pool, order)
    request = order_message(order, Touchpoint.ORDER_CONFIRMATION)
    outcome = await held_by_the_erasure(pool, order, send(outbox_messaging, request))

    assert (outcome.state, outcome.error) == (DeliveryState.NOT_PERMITTED, erasure.CUSTOMER_ERASED)
    assert await pool.fetchval("SELECT count(*) FROM outbox WHERE ledger_key = $1", request.key) == 0
    assert await where_found(pool, personal_data(order)) == []


async def test_a_case_record_that_waits_on_the_erasure_writes_none_of_their_words_back(pool):
    """A case's record (a resolution quoting the customer) waits at the
    customer's row while the erasure's transaction is open; once it commits,
    the record sees the customer erased and writes no words back."""
    from datetime import datetime, timezone

    from store.cases import open_case, record_case
    from workflows.models import CaseRecord, CaseStatus

    order = an_order_of_their_own()
    await store(pool, order)
    async with pool.acquire() as conn:
        opening = await open_case(conn, order_id=order["order_id"], trigger="complaint", trigger_key=uuid.uuid4().hex, text="crushed")
    words = f"We called {order['customer']['name']} back"
    record = CaseRecord(case_id=opening.case_id, status=CaseStatus.RESOLVED, owner="care@shop.example", escalation_level=0,
                        due_at=None, resolved_at=datetime.now(timezone.utc), resolution=words, reopen_comment=words)
    assert await held_by_the_erasure(pool, order, record_case(pool, record)) is True  # told: erased

    row = await pool.fetchrow("SELECT resolution, reopen_comment FROM cases WHERE case_id = $1", opening.case_id)
    assert tuple(row) == (None, None)


# --- the HTTP endpoint ----------------------------------------------------------

ERASURE_TOKEN = "back-office-erasure-token"


@pytest.fixture
def web_config(database_url: str):
    from tests.test_web import service_config

    return service_config(database_url, erasure_api_token=ERASURE_TOKEN)


async def http_client(config, pool, temporal):
    import httpx

    from web.app import create_app

    app = create_app(config, pool=pool, temporal_client=temporal)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=config.public_url)


async def test_the_endpoint_needs_its_token_forgets_with_a_receipt_and_shows_its_state(pool, outbox_messaging, web_config):
    from tests.test_web import FakeTemporal

    order = await a_customer_with_history(pool, outbox_messaging)
    cid = order["customer"]["customer_id"]
    body = {"customer_id": cid, "requested_by": "back office"}
    temporal = FakeTemporal()
    async with await http_client(dataclasses.replace(web_config, erasure_api_token=None), pool, temporal) as http:
        assert (await http.post("/erasures", json=body)).status_code == 503
    async with await http_client(web_config, pool, temporal) as http:
        assert (await http.post("/erasures", json=body)).status_code == 401
        assert (await http.post("/erasures", json=body, headers={"Authorization": "Bearer wrong"})).status_code == 403
        assert await where_found(pool, personal_data(order))  # refused: nothing erased
        auth = {"Authorization": f"Bearer {ERASURE_TOKEN}"}
        bad = await http.post("/erasures", json={"customer_id": "ada@example.com", "requested_by": "x"}, headers=auth)
        assert bad.status_code == 422 and "customer_id" in bad.text

        answer = await http.post("/erasures", json=body, headers=auth)
        assert answer.status_code == 202
        receipt = answer.json()
        assert receipt["receipt_id"].startswith("er-") and receipt["erased"]["customers"] == 1
        assert await where_found(pool, personal_data(order)) == []
        # Both workflows told, so the erasure is complete.
        assert sorted(temporal.sent) == [
            (f"case-{order['order_id']}-1", "customer_erased", {}),
            (f"customer-{cid}", "customer_erased", {}),
            (f"order-{order['order_id']}", "customer_erased", {}),
        ]
        assert receipt["state"] == "completed"
        shown = await http.get(f"/erasures/{receipt['receipt_id']}", headers=auth)
        assert shown.status_code == 200 and shown.json() == receipt
        assert (await http.get(f"/erasures/{receipt['receipt_id']}")).status_code == 401
        assert (await http.get("/erasures/er-unknown", headers=auth)).status_code == 404
        # Again: the first receipt, nothing signalled twice.
        again = await http.post("/erasures", json={**body, "requested_by": "someone else"}, headers=auth)
        assert again.status_code == 202 and again.json()["receipt_id"] == receipt["receipt_id"]
        assert len(temporal.sent) == 3


async def test_while_temporal_is_away_the_erasure_waits_for_its_signals(pool, outbox_messaging, web_config):
    order = await a_customer_with_history(pool, outbox_messaging)
    auth = {"Authorization": f"Bearer {ERASURE_TOKEN}"}
    async with await http_client(web_config, pool, None) as http:  # Temporal at a closed port
        answer = await http.post("/erasures", json={"customer_id": order["customer"]["customer_id"], "requested_by": "dpo"}, headers=auth)
        assert answer.status_code == 202
        receipt = answer.json()
        assert receipt["state"] == "workflows_being_told" and receipt["completed_at"] is None
        assert await where_found(pool, personal_data(order)) == []  # PostgreSQL's part is done already
        assert await erasure.pending_signals(pool, receipt["receipt_id"]) == 3


async def test_orders_forget_does_what_the_endpoint_does(pool, outbox_messaging, database_url, monkeypatch):
    from starter.cli import UsageError, forget_customer
    from tests.conftest import TEST_ERASURE_SALT
    from tests.test_web import FakeTemporal

    monkeypatch.setenv("DATABASE_URL", database_url)
    order = await a_customer_with_history(pool, outbox_messaging)
    cid = order["customer"]["customer_id"]
    temporal = FakeTemporal()
    monkeypatch.setenv("ERASURE_SALT", "another salt, of another service")
    with pytest.raises(UsageError, match="ERASURE_SALT is not the one"):
        await forget_customer(temporal, cid, "dpo")
    monkeypatch.setenv("ERASURE_SALT", TEST_ERASURE_SALT)
    receipt = await forget_customer(temporal, cid, "dpo")
    assert receipt["state"] == "completed" and receipt["requested_by"] == "dpo"
    assert await where_found(pool, personal_data(order)) == []
    assert {(w, name) for w, name, _ in temporal.sent} == {
        (f"case-{order['order_id']}-1", "customer_erased"),
        (f"customer-{cid}", "customer_erased"),
        (f"order-{order['order_id']}", "customer_erased"),
    }
    assert (await forget_customer(temporal, cid, "dpo"))["receipt_id"] == receipt["receipt_id"]
    with pytest.raises(UsageError, match="not a customer id"):
        await forget_customer(temporal, "ada@example.com", "dpo")


async def test_the_erasure_s_workflows_are_its_orders_customer_cases_and_resends_that_ran(pool, outbox_messaging, data_keys):
    """Whose data keys the erasure destroys (web/erasures.py): a second
    customer's workflows are not among them."""
    order, other = await a_customer_with_history(pool, outbox_messaging), await a_customer_with_history(pool, outbox_messaging)
    oid, cid = order["order_id"], order["customer"]["customer_id"]
    resent = order_message(order, Touchpoint.ORDER_CONFIRMATION).key
    for workflow_id in (f"resend-{resent}", f"resend-{order_message(other, Touchpoint.ORDER_CONFIRMATION).key}"):
        await data_keys.for_workflow(workflow_id)
    done = await forget(pool, cid)
    assert await erasure.workflows(pool, done.receipt.receipt_id) == sorted(
        [f"case-{oid}-1", f"customer-{cid}", f"order-{oid}", f"resend-{resent}"]
    )
