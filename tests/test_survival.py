"""The failure drills of `python -m bench chaos`, small enough for CI (named
to run after the time-skipping tests, which share one test server): orders
in flight while the worker is killed or redeployed, the providers misbehave,
PostgreSQL goes away for 30 s, the Temporal server restarts, Twilio is
down, and one of two workers is killed for good. Every order completes; no
message is sent twice; none is lost; none is left in doubt: a mail a crash
or a timeout left unanswered is settled from the fake's Email Activity
(found there, or sent then)."""

from __future__ import annotations

import pytest

from bench.chaos import DEPLOY_GRACE_SECONDS, DRILLS, run_drill

# Enough orders that the worker restarts while many are in flight.
ORDERS = {"kill-worker": 60, "deploy": 60, "two-workers": 40}
# Long enough that a mail waiting for the SMS channel would show, far
# shorter than the bench's two minutes.
SMS_OUTAGE_SECONDS = 30.0


@pytest.mark.parametrize("drill", list(DRILLS))
async def test_drill(drill: str):
    report = await run_drill(drill, orders=ORDERS.get(drill, 30), concurrency=30, sms_outage_seconds=SMS_OUTAGE_SECONDS)
    # The lost and stranded messages, with their ledger and workflow states.
    why = "\n".join([report.headline(), *report.unaccounted])
    assert report.completed == report.orders, report.errors
    assert report.duplicates == 0, why
    assert report.lost == 0, why
    assert report.in_doubt == 0, why
    if drill in ("kill-worker", "deploy"):
        assert report.notes, "the worker was never restarted while orders were in flight"
    if drill == "two-workers":
        assert report.notes, "no worker was killed while orders were in flight"
        # Both took work (each counted on its own metrics port); the survivor finished it.
        assert len(report.messages_settled_by_worker) == 2 and min(report.messages_settled_by_worker) > 0, report.notes
    if drill == "deploy":
        assert max(report.shutdown_seconds) < DEPLOY_GRACE_SECONDS, "a worker had to be killed after SIGTERM"
    if drill == "provider-faults":
        # 502/504 after acceptance and late answers leave mails in doubt, which
        # Email Activity then shows.
        assert report.settled_from_doubt > 0 and report.email_activity_searches.get("found"), why
        assert report.failed_permanently > 0 and report.fell_back_to_other_channel > 0
        assert report.refused_not_handed_over == 0, why
        assert {"429", "500", "502", "503"} <= set(report.provider_answers)
    if drill == "channel-outage":
        assert report.provider_answers.get("503"), "Twilio was never down"
        during = report.email_latency_ms["during_sms_outage"]
        assert during["emails"] > 0, report.email_latency_ms
        # No mail waited for the SMS channel to come back.
        assert during["max"] < 1000 * SMS_OUTAGE_SECONDS / 3, report.email_latency_ms
