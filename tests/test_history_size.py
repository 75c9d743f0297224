"""What an order costs in history bytes (python -m bench history measures it
all): the overhead the worker itself sets on events, and payloads kept lean."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from decimal import Decimal

from temporalio.client import WorkflowHistory
from temporalio.worker._worker import load_default_build_id

from bench.actions import history_size
from bench.history import Breakdown
from tests.conftest import HISTORIES
from workflows.models import CustomerState, JourneySettings, LifecycleSettings, OrderFacts
from worker import build_worker


async def test_the_worker_stamps_a_short_build_id_that_still_follows_the_code(ts_env, pool, provider_config):
    """The build id goes on every workflow task's started and completed event
    and every activity's started event (46 events of a happy-path order): the
    SDK's default, an MD5 of the loaded code in 32 hex digits, cut to 8."""
    worker = build_worker(ts_env.client, pool, provider_config, JourneySettings(), task_queue="tq-build-id")
    build_id = worker.config()["build_id"]
    assert len(build_id) == 8 and load_default_build_id().startswith(build_id)


def a_customer_state() -> CustomerState:
    placed = datetime(2026, 12, 1, 9, 30, tzinfo=timezone.utc)
    order = OrderFacts(order_id="A1", placed_at=placed, total=Decimal("42.80"), status="placed")
    return CustomerState(
        customer_id="C1", settings=LifecycleSettings(), phase_since=placed, timezone="Europe/Warsaw", has_phone=True,
        orders={"A1": order}, orders_total=1, last_order_at=placed,
    )


def test_the_customer_starts_from_a_lean_state_with_its_settings_in_full():
    """The customer's starting state goes into its history (started event):
    what is at its default (empty timeline, lanes, messages...) is left out,
    except the settings, captured in full when it starts so that a worker
    whose defaults differ reads the same ones."""
    state = a_customer_state()
    starting = state.starting_input()
    assert CustomerState.model_validate(starting) == state
    assert starting["settings"] == LifecycleSettings().model_dump(mode="json")
    assert not {"timeline", "messages", "lanes", "pending_news", "win_back", "welcomed"} & starting.keys()
    assert len(json.dumps(starting)) < len(state.model_dump_json()) * 0.8


def test_bench_history_accounts_for_every_byte_of_a_history():
    """`python -m bench history`: payloads by kind and overhead by field add
    up to the history's size as bench/actions.py counts it."""
    path = HISTORIES / "happy_path.json"
    history = WorkflowHistory.from_json(path.stem, path.read_text())
    breakdown = Breakdown()
    breakdown.add(history)
    overhead = sum(sum(fields.values()) for fields in breakdown.overhead.values())
    assert sum(breakdown.payload_bytes.values()) + overhead == history_size(history)[1]
    assert breakdown.payload_count["activity send_message input"] == 8
    assert breakdown.payload_bytes["workflow result"] > 1000
