"""Recorded histories of every journey path replay against today's workflow
code, as the worker runs them (without the sandbox) and under the
full sandbox, so a change that breaks determinism fails here before it
breaks running orders. They replay through the encrypting data converter the
worker uses, data keys included: the older ones predate encryption, so their
plain payloads pass through it, as those of orders running when encryption
was turned on do; the newer ones predate per-workflow data keys, their
payloads under the shared master key, as those of orders running when data
keys came (tests/conftest.py keep_history re-seals new recordings so).
Re-record deliberately with `RECORD_HISTORIES=1 pytest` only for a change
that is meant to be incompatible (see README: workflow.patched)."""

from __future__ import annotations

from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner

from codec import DataKeys, encrypted_data_converter
from worker import workflow_runner
from workflows.case_handling import CaseWorkflow
from workflows.customer_journey import CustomerJourney
from workflows.order_lifecycle import OrderLifecycle
from workflows.retention import RetentionRun
from workflows.wocas_report import WocasReport

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))
EXPECTED = {
    "happy_path",
    "payment_timeout",
    "cancelled",
    "late_dispatch",
    "dispatch_deadline",
    "delivery_late",
    "parcel_lost",
    "locker_reminder",
    "locker_deadline",
    "feedback_window_expired",
    "failed_message",
    # Recorded before in-doubt mail was settled: flagged, as a mail Email
    # Activity cannot check still is.
    "message_in_doubt",
    "message_settled",
    "message_undelivered",
    # Cancelled, and its mail reported bounced inside the report window: the
    # window and the hand-over to SMS. Histories recorded before the window
    # (cancelled, parcel_lost...) replay without it: their first activity
    # captured no report_window.
    "cancelled_then_bounced",
    "superseded",
    "continued_as_new",
    "continued_run",
    "rejected_order",
    # Recorded on the code before early events were held: a locker order's
    # dispatch, out-for-delivery, feedback, collection and delivery each came
    # before the event it follows and was rejected as out of order. Orders
    # that ran so replay as they ran (workflow.patched).
    "out_of_order_rejected",
    # A locker order on the code that holds early events: its collection,
    # before the delivery, held and applied with it (one patch marker).
    "early_events_held",
    # The customer's journey.
    "customer_first_order",
    "customer_many_orders",
    # Service recovery: an order rated low opens a case (one patch marker);
    # a case escalated twice, resolved by update, reopened once.
    "low_rating_case",
    "case_escalated_resolved_reopened",
    # A reopened case closed by its customer's erasure (customer_erased), an
    # update refused while it closed.
    "case_closed_customer_erased",
    # The WOCAS report's scheduled run: built, then mailed to two leads.
    "wocas_report",
    # The retention schedule's run: three rules, an activity each.
    "retention_run",
}


def test_item15_every_journey_path_has_a_recorded_history():
    assert {p.stem for p in HISTORIES} == EXPECTED


RUNNERS = {
    # Exactly as the worker runs workflows.
    "production": workflow_runner,
    # The full sandbox re-imports our modules, so a wall-clock, random or I/O
    # call in them fails here even though production runs them unsandboxed.
    "strict": SandboxedWorkflowRunner,
}


@pytest.mark.parametrize("runner", RUNNERS)
@pytest.mark.parametrize("path", HISTORIES, ids=lambda p: p.stem)
async def test_item15_history_replays(path: Path, runner: str, data_keys: DataKeys):
    history = WorkflowHistory.from_json(f"order-{path.stem}", path.read_text())
    replayer = Replayer(
        workflows=[OrderLifecycle, CustomerJourney, CaseWorkflow, WocasReport, RetentionRun], data_converter=encrypted_data_converter(data_keys), workflow_runner=RUNNERS[runner]()
    )
    await replayer.replay_workflow(history)
