"""A worker process killed (SIGKILL) while its sends are at the provider,
as tests/test_exactly_once.py simulates by ending a lease by hand: here the
lease ends as it does in production, when the attempt's start_to_close runs
out, and a second worker process takes the messages over only then. The SMS
is found by the look-up at Twilio, the mail is settled from doubt through
Email Activity: each reached its provider once, and nothing is left in doubt.

A real worker (`python worker.py`) on its own PostgreSQL, dev server and
fake providers (bench/stack.py); about 70 seconds, most of it the lease."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone

import asyncpg
import pytest

from bench.stack import start_stack, wait_for_pollers
from starter.cli import place_order
from tests.conftest import new_order, payment_for
from tests.fake_providers import FakeProviders, RecordedRequest
from tests.test_journey import kinds
from tests.test_metrics import recorded, status_until
from workflows.ledger_key import LedgerKey
from workflows.models import workflow_id_for
from workflows.retries import SEND_TIMEOUTS

# Long past the kill: the first worker never hears an answer.
HANG_SECONDS = 120


@pytest.mark.long(65)
async def test_a_worker_killed_while_its_sends_are_at_the_provider_is_taken_over_once_the_lease_ends():
    fakes = FakeProviders()
    stack = await start_stack(fakes=fakes)
    lookups: list[tuple[str, datetime]] = []  # (channel looked up, when)

    def note_lookup(req: RecordedRequest) -> None:
        if req.method == "GET" and req.path.endswith("/Messages.json"):
            lookups.append(("sms", datetime.now(timezone.utc)))
        elif req.method == "GET" and req.path == "/v3/messages":  # Email Activity
            lookups.append(("email", datetime.now(timezone.utc)))

    fakes.on_request = note_lookup
    db = await asyncpg.connect(stack.database_url)
    try:
        # The mail in doubt is due for settling a second after the take-over.
        first = stack.our_worker(provider_timeout=10, extra={"SENDGRID_SETTLE_AFTER": "1s"})
        first.start()
        await wait_for_pollers(stack)
        order = new_order()
        email, phone = order["customer"]["email"], order["customer"]["phone"]
        await place_order(stack.client, order)
        handle = stack.client.get_workflow_handle(workflow_id_for(order["order_id"]))
        await status_until(stack, order["order_id"], recorded("order_confirmation", "email", "sent"))
        await handle.signal("payment_received", payment_for(order))
        await status_until(stack, order["order_id"], recorded("payment_confirmation", "email", "sent"))

        tomorrow = (datetime.now(timezone.utc) + timedelta(days=1)).date().isoformat()
        fakes.hang_next(email, HANG_SECONDS)
        fakes.hang_next(phone, HANG_SECONDS)
        await handle.signal("order_dispatched", {"carrier": "DHL", "tracking_number": "KILL1", "expected_delivery": tomorrow})
        await until(lambda: dispatch_notices(fakes, email, phone) == (1, 1))
        first.kill()
        keys = [str(LedgerKey.of_order(order["order_id"], "dispatch_notice", channel)) for channel in ("email", "sms")]
        rows = await db.fetch("SELECT key, state, lease_until FROM message_ledger WHERE key = ANY($1) ORDER BY key", keys)
        assert [(r["key"], r["state"]) for r in rows] == [(keys[0], "sending"), (keys[1], "sending")]
        lease_ends = {LedgerKey.parse(r["key"]).channel.value: r["lease_until"] for r in rows}

        second = stack.our_worker(provider_timeout=10, extra={"SENDGRID_SETTLE_AFTER": "1s"})
        second.start()
        # No query meanwhile: the dead worker's sticky queue would hold it.
        timeout = SEND_TIMEOUTS["start_to_close_timeout"].total_seconds() + 60
        settled = "SELECT count(*) FROM message_ledger WHERE key = ANY($1) AND state = 'sent'"
        await until_async(lambda: db.fetchval(settled, keys), lambda n: n == 2, timeout)
        both_sent = lambda v: recorded("dispatch_notice", "email", "sent")(v) and recorded("dispatch_notice", "sms", "sent")(v)  # noqa: E731
        view = await status_until(stack, order["order_id"], both_sent)
        ledger = await db.fetch("SELECT key, state, attempts FROM message_ledger WHERE order_id = $1", order["order_id"])
        await handle.terminate("test done")
    finally:
        await db.close()
        await stack.shutdown()

    assert first.was_killed
    assert dispatch_notices(fakes, email, phone) == (1, 1)
    assert fakes.duplicates() == {}
    dispatch = [(k, c, s) for k, c, s in kinds(view) if k == "dispatch_notice"]
    assert sorted(dispatch) == [("dispatch_notice", "email", "in_doubt"), ("dispatch_notice", "email", "sent"), ("dispatch_notice", "sms", "sent")]
    assert not view.needs_attention, view.attention_reasons
    messages = [(LedgerKey.parse(r["key"]), r["state"], r["attempts"]) for r in ledger]
    assert sorted((k.kind.value, k.channel.value, state, attempts) for k, state, attempts in messages) == [
        ("dispatch_notice", "email", "sent", 1),
        ("dispatch_notice", "sms", "sent", 1),
        ("order_confirmation", "email", "sent", 1),
        ("payment_confirmation", "email", "sent", 1),
    ]
    # Each looked up once, and only after the dead worker's lease on it had ended.
    assert sorted(channel for channel, _ in lookups) == ["email", "sms"]
    assert all(at >= lease_ends[channel] for channel, at in lookups), (lookups, lease_ends)


def dispatch_notices(fakes: FakeProviders, email: str, phone: str) -> tuple[int, int]:
    """The dispatch notices the providers took: (mails, SMS)."""
    return (
        sum("KILL1" in text for text in fakes.deliveries_to(email)),
        sum("KILL1" in text for text in fakes.deliveries_to(phone)),
    )


async def until(condition, timeout: float = 30) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.01)


async def until_async(read, done, timeout: float) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not done(await read()):
        assert asyncio.get_running_loop().time() < deadline, "timed out waiting"
        await asyncio.sleep(0.2)
