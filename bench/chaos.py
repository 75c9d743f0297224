"""`python -m bench chaos`: orders in flight while things break. Each drill
drives real orders through the whole journey and then checks, at the fake
provider and in the ledger, that every order completed, no message was lost,
none was sent twice and none was left in doubt: a mail whose send a crash or
a timeout left unanswered is settled by SendGrid's event or from the fake's
Email Activity. It reports how close those look-ups came to the window of
risk.

Drills: kill-worker (SIGKILL, restart, several times), deploy (SIGTERM, the
worker drains and exits by itself, restart, several times), provider-faults
(30 % 429/5xx, some requests answered only after the client gave up,
permanent refusals, and the providers' reports posted to the HTTP service,
bounces among them), postgres-outage (stopped for 30 s), temporal-restart
(dev server restarted on its database file while the reports keep coming),
channel-outage (Twilio answers
503 to every SMS for a while; mails must not wait for it), two-workers (two
workers share the task queue; one is SIGKILLed mid-flight and never comes
back, and the other finishes every order), kill-and-faults (two SIGKILLs
while 10 % of requests get a 429/5xx and 10 % are taken but answered only
after the client gave up).

Every drill checks each completed order's own record (the final state of
each of its messages in the workflow's result) against what the fake
providers took: a message recorded sent, or owed by the journey and
recorded as nothing else, that they never took is lost; a record they
contradict (sent but never taken; superseded, failed, not permitted,
stale, skipped or nothing at all, but taken) is untrue.
"""

from __future__ import annotations

import asyncio
import functools
import json
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
from temporalio.client import Client
from temporalio.service import RetryConfig

from bench.driver import OrderRun, System, Tracker, bench_order, drive, new_run_id
from bench.prometheus import free_port, parse, scrape, total
from bench.stack import TWILIO_TOKEN, Stack, WorkerProcess, start_stack, wait_for_pollers
from bench.throughput import percentile
from codec import encrypted_data_converter
from store import provider_events
from tests.fake_providers import BOUNCING_EMAIL_DOMAIN, AcceptedMessage, FakeProviders
from tests.fake_reports import BOUNCES_LATER_DOMAIN, ProviderReports, new_key_pair
from workflows import channel_policy
from workflows.ledger_key import LedgerKey
from workflows.models import Channel, Touchpoint, workflow_id_for

RIDE_OUT_OUTAGES = RetryConfig(max_interval_millis=2000, max_elapsed_time_millis=120_000, max_retries=100)

RESTARTS = 3  # kills or deploys per drill
KILLS_AMID_FAULTS = 2
SECONDS_BETWEEN_RESTARTS = 6
# Kubernetes' default: a worker still running this long after SIGTERM is killed.
DEPLOY_GRACE_SECONDS = 30.0

SMS_OUTAGE_SECONDS = 120.0
# Orders are placed from this long before the outage until this long after it,
# so some mails go out before, during and after.
OUTAGE_MARGIN_SECONDS = 10.0

# The event after which the journey owes each order message ("start": the
# order placed). The feedback request and the recommendations follow the
# delivery by timers; the delivery-day notice goes if the seller sends one.
DUE_AFTER = {
    "order_confirmation": "start",
    "payment_confirmation": "payment_received",
    "dispatch_notice": "order_dispatched",
    "delivery_day": "out_for_delivery",
    "delivery_confirmation": "order_delivered",
    "feedback_request": "order_delivered",
    "recommendations": "order_delivered",
}
FOLLOW_TIMERS = ("feedback_request", "recommendations")
# The event whose signal causes each mail, for the signal-to-request latency.
MAIL_CAUSES = {kind: event for kind, event in DUE_AFTER.items() if kind not in FOLLOW_TIMERS}

# What an order's record says of a message, by its last state: the provider
# took it (`undelivered`: took it, then reported it did not arrive), or it
# was not sent, by design (refused, nothing to say, not allowed, too late,
# overtaken by the journey). A message left in doubt is counted apart.
TAKEN = ("sent", "undelivered")
NOT_SENT_BY_DESIGN = ("failed", "skipped", "not_permitted", "stale", "superseded")
IN_DOUBT = "in_doubt"
SUPERSEDED = "superseded"
# Workers polling the task queue at once, per drill (default 1).
WORKERS = {"two-workers": 2}
# How long a drill waits for its workers to poll before it starts.
STARTUP_TIMEOUT = 180.0
# Examples of lost, left in doubt and untrue shown in a report, each.
EXAMPLES_SHOWN = 20

# A mail in doubt is looked up this long after (SENDGRID_SETTLE_AFTER, 10
# minutes in production), in a fake Email Activity that shows a mail this long
# after it took it (SendGrid's takes minutes): the window is longer than the lag.
SETTLE_AFTER = "5s"
EMAIL_ACTIVITY_LAG_SECONDS = 1.0

# Drills with the HTTP service taking the providers' reports (SendGrid's
# events, Twilio's status callbacks), posted 0.5 to 8 s after each send: a
# mail in doubt is settled by its `processed` event or, when that comes after
# the window, from Email Activity; every 10th customer's mail is taken, then
# reported bounced, and goes by SMS. In temporal-restart, reports keep coming
# while Temporal is down.
REPORTED = {"provider-faults", "temporal-restart"}
# How long an order stays open for a report of its last message: the reports
# come within 8.4 s of a send.
REPORT_WINDOW = "10s"


@dataclass
class DrillReport:
    drill: str
    orders: int
    completed: int = 0
    seconds: float = 0.0
    # Order messages the orders' records and their journeys say the providers
    # should have (recorded sent, or owed and recorded as nothing else), and
    # every message the fake providers took (the customers' welcome mails too).
    messages_expected: int = 0
    messages_delivered: int = 0
    # Expected, but the fake providers never took it: must be zero.
    lost: int = 0
    # Order messages whose record the providers contradict: recorded sent but
    # never taken, or recorded not sent (superseded, failed, ...) or not at all
    # but taken: must be zero.
    untrue: int = 0
    duplicates: int = 0
    # Left in doubt at the end (ledger 'in_doubt'): must be zero.
    in_doubt: int = 0
    # Mails a crash or a timeout left in doubt, settled once the window passed:
    # found in Email Activity, or sent then because it showed nothing.
    settled_from_doubt: int = 0
    email_activity_searches: dict[str, int] = field(default_factory=dict)
    failed_permanently: int = 0
    fell_back_to_other_channel: int = 0
    # Refused for good, and the other channel never took it up (sent, in
    # doubt, or superseded because the journey had moved on): must be zero.
    refused_not_handed_over: int = 0
    # Touchpoints the workflow dropped because the journey had moved past them.
    superseded: int = 0
    # The lost and the in-doubt messages, and the untrue records: what the
    # workflow recorded, what the providers took, the ledger's row.
    unaccounted: list[str] = field(default_factory=list)
    untrue_records: list[str] = field(default_factory=list)
    # deploy: seconds from each SIGTERM until the worker had exited.
    shutdown_seconds: list[float] = field(default_factory=list)
    # two-workers: messages each worker had settled (orders_messages_total on
    # its metrics port): the killed one just before SIGKILL, the survivor at the end.
    messages_settled_by_worker: list[int] = field(default_factory=list)
    # channel-outage: seconds into the drill the SMS outage began and ended,
    # and signal-to-SendGrid-request latency of mails signalled during it and outside it.
    sms_outage: tuple[float, float] | None = None
    email_latency_ms: dict[str, dict[str, float]] = field(default_factory=dict)
    provider_answers: dict[str, int] = field(default_factory=dict)
    # Requests the fake providers took but answered only after the client's timeout.
    late_answers: int = 0
    # How close the settlement of mails in doubt came to the window of risk.
    window_of_risk: dict[str, Any] = field(default_factory=dict)
    # REPORTED drills: the reports posted (by what they said), the HTTP
    # service's answers, the touchpoints reported undelivered and those of
    # them the other channel then carried, the reports that came once the
    # order was over, and the signals still owed at the end: must be zero, as
    # must the reports the fake gave up posting.
    provider_reports: dict[str, Any] = field(default_factory=dict)
    reports_owed: int = 0
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    # Why the drill's failure never happened (then it proved nothing).
    not_disrupted: str | None = None

    @property
    def passed(self) -> bool:
        return (
            self.not_disrupted is None
            and self.completed == self.orders
            and self.lost == 0
            and self.untrue == 0
            and self.duplicates == 0
            and self.in_doubt == 0
            and self.refused_not_handed_over == 0
            and self.reports_owed == 0
            and self.provider_reports.get("given_up", 0) == 0
        )

    def headline(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return (
            f"{self.drill}: {verdict}: {self.completed}/{self.orders} orders completed, lost {self.lost}, "
            f"duplicated {self.duplicates}, left in doubt {self.in_doubt}, untrue records {self.untrue} "
            f"(settled from doubt {self.settled_from_doubt})"
            + (f"; {self.not_disrupted}" if self.not_disrupted else "")
            + (self._risk() if self.window_of_risk.get("searches") else "")
            + (self._reports() if self.provider_reports else "")
        )

    def _reports(self) -> str:
        r = self.provider_reports
        return (
            f"; {sum(r['posted'].values())} provider reports, {r['undelivered_touchpoints']} messages reported undelivered "
            f"(the other channel then: {r['other_channel_then']}), signals still owed {self.reports_owed}"
        )

    def _risk(self) -> str:
        w = self.window_of_risk
        held = w["held_when_searched_s"]
        return (
            f"; Email Activity searched {w['searches']} time(s), {w['taken_when_searched']} for mails SendGrid had"
            + (f" (held {held['min']}-{held['max']} s; shown after {w['email_activity_lag_s']:g} s)" if held else "")
            + f", {w['taken_but_not_yet_visible']} of them not yet visible (sent again unless the journey had moved on)"
        )


@dataclass
class Scene:
    """What a drill breaks while `driving` drives the orders."""

    stack: Stack
    workers: list[WorkerProcess]
    report: DrillReport
    driving: asyncio.Task
    began: float
    sms_outage_seconds: float

    @property
    def worker(self) -> WorkerProcess:
        return self.workers[0]


def other_channel_key(key: str) -> str:
    """The ledger key of the same touchpoint on the other channel."""
    parsed = LedgerKey.parse(key)
    return str(parsed.on(channel_policy.other_channel(parsed.channel)))


def touchpoint_of(key: str) -> tuple[str, str, str | None]:
    """The message a ledger key names, whatever its channel."""
    parsed = LedgerKey.parse(key)
    return parsed.workflow_id, parsed.kind.value, parsed.occasion


def touchpoints(runs: list[OrderRun]) -> dict[str, list[dict[str, Any]]]:
    """Ledger key -> the touchpoints the workflow recorded (state, error, ...),
    in order: a message in doubt has a second one once settled."""
    recorded: dict[str, list[dict[str, Any]]] = {}
    for run in runs:
        for touchpoint in (run.result or {}).get("touchpoints", []):
            key = str(LedgerKey.of_order(run.order_id, touchpoint["kind"], touchpoint["channel"]))
            recorded.setdefault(key, []).append(touchpoint)
    return recorded


def owed(run: OrderRun, order: dict[str, Any]) -> set[str]:
    """The ledger keys of the messages the journey owes an order the drill
    drove: each touchpoint whose event came, on its channels."""
    reachable = {Channel.EMAIL} | ({Channel.SMS} if order["customer"].get("phone") else set())
    keys = set()
    for kind, event in DUE_AFTER.items():
        if event not in run.signalled_at:
            continue
        if kind == "delivery_day" and not order["seller"].get("sends_delivery_day_notice"):
            continue
        for channel in channel_policy.channels_for(Touchpoint(kind), reachable):
            keys.add(str(LedgerKey.of_order(run.order_id, kind, channel)))
    return keys


async def ledger_rows(stack: Stack, orders: list[dict[str, Any]]) -> list[asyncpg.Record]:
    """The orders' rows, and their customers' (which name no order)."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        return await conn.fetch(
            "SELECT key, order_id, channel, state, attempts, provider_message_id, recipient, body_text FROM message_ledger"
            " WHERE order_id = ANY($1::text[]) OR customer_id = ANY($2::text[])",
            [o["order_id"] for o in orders],
            [o["customer"]["customer_id"] for o in orders],
        )
    finally:
        await conn.close()


class Accepted:
    """What the fake providers took, by ledger key: a mail carries its key
    (the custom arg `message_key`); an SMS is known by its number and body,
    which the ledger keeps as first rendered and every attempt sends."""

    def __init__(self, messages: list[AcceptedMessage], rows: list[asyncpg.Record]) -> None:
        self.messages = messages
        sms_keys = {(r["recipient"], r["body_text"]): r["key"] for r in rows if r["channel"] == "sms"}
        self.copies: Counter[str] = Counter()
        # Taken, but no ledger key names them.
        self.unnamed: list[AcceptedMessage] = []
        for m in messages:
            key = m.key if m.channel == "email" else sms_keys.get((m.recipient, m.text))
            if key:
                self.copies[key] += 1
            else:
                self.unnamed.append(m)

    def duplicates(self) -> int:
        copies = Counter(m.identity for m in self.messages)
        return sum(n - 1 for n in copies.values() if n > 1)


def described(key: str, records: list[dict[str, Any]], taken: int, row: asyncpg.Record | None) -> str:
    """One message as the workflow recorded it, the providers took it and the ledger holds it."""
    workflow = " then ".join(t["state"] for t in records) or "recorded nothing"
    if records and records[-1].get("error"):
        workflow += f" ({records[-1]['error']})"
    ledger = f"ledger {row['state']} after {row['attempts']} attempt(s)" if row else "no ledger row"
    return f"{key}: workflow {workflow}; provider took {taken}; {ledger}"


def check_records(
    report: DrillReport,
    runs: list[OrderRun],
    orders: list[dict[str, Any]],
    history: dict[str, list[dict[str, Any]]],
    accepted: Accepted,
    rows: dict[str, asyncpg.Record],
) -> None:
    """Each completed order's record against what the fake providers took,
    message by message: lost (owed or recorded sent, never taken) and untrue
    (recorded sent but not taken, or taken but recorded as not sent or not
    at all). The ledger only tells which message an SMS is (by its body),
    and shows its row in the examples."""
    order_by_id = {o["order_id"]: o for o in orders}
    # Every key recorded or taken, by the workflow it names (a customer's too).
    keys_of: dict[str, set[str]] = {}
    for key in [*history, *accepted.copies]:
        keys_of.setdefault(LedgerKey.parse(key).workflow_id, set()).add(key)
    for run in runs:
        if run.result is None:  # not completed: counted as such
            continue
        due = owed(run, order_by_id[run.order_id])
        for key in sorted(due | keys_of.get(workflow_id_for(run.order_id), set())):
            records = history.get(key, [])
            last = records[-1]["state"] if records else None
            taken = accepted.copies[key]
            expected = last in TAKEN or (key in due and last not in (*NOT_SENT_BY_DESIGN, IN_DOUBT))
            report.messages_expected += expected
            lost = expected and not taken
            untrue = (last in TAKEN and not taken) or (taken and last not in TAKEN and last != IN_DOUBT)
            report.lost += lost
            report.untrue += untrue
            if lost:
                report.unaccounted.append(described(key, records, taken, rows.get(key)))
            if untrue:
                report.untrue_records.append(described(key, records, taken, rows.get(key)))
    # A message to a completed order's customer that no key names: no record is true of it.
    completed = [order_by_id[r.order_id] for r in runs if r.result is not None]
    order_at = {o["customer"][c]: o["order_id"] for o in completed for c in ("email", "phone") if o["customer"].get(c)}
    for m in accepted.unnamed:
        if m.recipient in order_at:
            report.untrue += 1
            workflow_id = workflow_id_for(order_at[m.recipient])
            report.untrue_records.append(f"{workflow_id}: {m.channel} {m.provider_id} taken, no ledger key names it")


async def audit(stack: Stack, report: DrillReport, runs: list[OrderRun], orders: list[dict[str, Any]]) -> None:
    """Compare each order's record, and the ledger, with what the fake
    providers took."""
    report.completed = sum(r.completed for r in runs)
    report.errors = [f"{r.order_id}: {r.error}" for r in runs if not r.completed][:10]
    all_rows = await ledger_rows(stack, orders)
    order_ids = {o["order_id"] for o in orders}
    rows = [r for r in all_rows if r["order_id"] in order_ids]
    accepted = Accepted(list(stack.fakes.accepted), all_rows)
    report.duplicates = accepted.duplicates()
    report.messages_delivered = len(accepted.messages)
    history = touchpoints(runs)
    recorded = {key: states[-1] for key, states in history.items()}
    report.superseded = sum(t["state"] == SUPERSEDED for t in recorded.values())
    report.settled_from_doubt = sum(
        any(t["state"] == IN_DOUBT for t in states) and states[-1]["state"] != IN_DOUBT for states in history.values()
    )
    report.email_activity_searches = dict(stack.fakes.email_activity_searches)
    check_records(report, runs, orders, history, accepted, {r["key"]: r for r in rows})
    states = Counter(r["state"] for r in rows)
    report.in_doubt = states[IN_DOUBT]
    report.failed_permanently = states["failed"]
    report.unaccounted += [
        described(r["key"], history.get(r["key"], []), accepted.copies[r["key"]], r) for r in rows if r["state"] == IN_DOUBT
    ]
    del report.unaccounted[EXAMPLES_SHOWN:], report.untrue_records[EXAMPLES_SHOWN:]
    failed_touchpoints = {touchpoint_of(r["key"]) for r in rows if r["state"] == "failed"}
    report.fell_back_to_other_channel = sum(
        1 for r in rows if r["state"] == "sent" and touchpoint_of(r["key"]) in failed_touchpoints
    )
    report.refused_not_handed_over = sum(
        1 for r in rows if r["state"] == "failed" and other_channel_key(r["key"]) not in recorded
    )
    report.provider_answers = {str(k): v for k, v in sorted(stack.fakes.answered.items())}
    report.late_answers = stack.fakes.hung
    report.window_of_risk = window_of_risk(stack.fakes)
    if report.provider_reports:
        reported = [key for key, states in history.items() if any(t["state"] == "undelivered" for t in states)]
        report.provider_reports["undelivered_touchpoints"] = len(reported)
        # The other channel's touchpoint after the report: sent, superseded (a
        # later message had gone there already), none (stale, or not permitted).
        report.provider_reports["other_channel_then"] = dict(
            Counter(recorded.get(other_channel_key(key), {}).get("state", "none") for key in reported)
        )


def window_of_risk(fakes: FakeProviders) -> dict[str, Any]:
    """Each Email Activity search against what the fake had in fact taken:
    how long SendGrid had held each mail when it was looked up (at least the
    settle window; safe while above the lag before a mail shows there), and
    how many mails it had taken that the search could not see yet: the
    window of risk, each sent a second time unless the journey had moved on."""
    first_taken: dict[str, float] = {}
    for mail in fakes.accepted:
        if mail.channel == "email" and mail.key:
            first_taken.setdefault(mail.key, mail.at)
    held = [at - first_taken[key] for key, at, _ in fakes.email_activity_log if first_taken.get(key, at) < at]
    not_visible = sum(not found and first_taken.get(key, at) < at for key, at, found in fakes.email_activity_log)
    return {
        "settle_after_s": float(SETTLE_AFTER.removesuffix("s")),
        "email_activity_lag_s": fakes.email_activity_lag,
        "searches": len(fakes.email_activity_log),
        "taken_when_searched": len(held),
        "held_when_searched_s": {"min": round(min(held), 2), "max": round(max(held), 2)} if held else {},
        "taken_but_not_yet_visible": not_visible,
    }


def latency_summary(seconds: list[float]) -> dict[str, float]:
    if not seconds:
        return {"emails": 0}
    return {
        "emails": len(seconds),
        **{f"p{q}": round(1000 * percentile(seconds, q)) for q in (50, 99)},
        "max": round(1000 * max(seconds)),
    }


def email_latencies(
    runs: list[OrderRun], accepted: list[AcceptedMessage], outage_began: float, outage_ended: float
) -> dict[str, dict[str, float]]:
    """Signal to SendGrid request of every mail a signal caused, split by
    whether the signal came while SMS were down."""
    runs_by_workflow = {workflow_id_for(r.order_id): r for r in runs}
    during: list[float] = []
    outside: list[float] = []
    for mail in accepted:
        if mail.channel != "email" or not mail.key:
            continue
        key = LedgerKey.parse(mail.key)
        run = runs_by_workflow.get(key.workflow_id)
        signalled = run.signalled_at.get(MAIL_CAUSES.get(key.kind.value, "")) if run else None
        if signalled is not None:
            (during if outage_began <= signalled < outage_ended else outside).append(mail.at - signalled)
    return {"during_sms_outage": latency_summary(during), "outside_sms_outage": latency_summary(outside)}


async def kill_worker(scene: Scene, kills: int = RESTARTS) -> None:
    for n in range(kills):
        await asyncio.sleep(SECONDS_BETWEEN_RESTARTS)
        if scene.driving.done():
            break
        scene.worker.kill()
        scene.report.notes.append(f"SIGKILL {n + 1} at {time.strftime('%X')}")
        await asyncio.sleep(1)
        scene.worker.start()


async def deploy(scene: Scene) -> None:
    """SIGTERM, wait for the worker to exit by itself, start the new one."""
    for n in range(RESTARTS):
        await asyncio.sleep(SECONDS_BETWEEN_RESTARTS)
        if scene.driving.done():
            break
        at = time.strftime("%X")
        # In a thread: the driver and its orders keep going while the worker drains.
        seconds = await asyncio.to_thread(scene.worker.stop, DEPLOY_GRACE_SECONDS)
        scene.report.shutdown_seconds.append(round(seconds, 2))
        killed = " (still running: SIGKILL)" if scene.worker.was_killed else ""
        scene.report.notes.append(f"SIGTERM {n + 1} at {at}: exited after {seconds:.1f} s{killed}")
        scene.worker.start()


async def stop_postgres(scene: Scene) -> None:
    await asyncio.sleep(5)
    scene.stack.stop_postgres()
    scene.report.notes.append("PostgreSQL stopped for 30 s")
    await asyncio.sleep(30)
    scene.stack.start_postgres_again()


async def restart_temporal(scene: Scene) -> None:
    await asyncio.sleep(6)
    await scene.stack.restart_temporal(down_seconds=5)
    scene.report.notes.append("Temporal dev server down for 5 s, restarted on its database file")


async def sms_outage(scene: Scene) -> None:
    await asyncio.sleep(OUTAGE_MARGIN_SECONDS)
    scene.stack.fakes.start_outage("sms")
    outage_began = time.monotonic() - scene.began
    await asyncio.sleep(scene.sms_outage_seconds)
    scene.stack.fakes.end_outage("sms")
    scene.report.sms_outage = (round(outage_began, 1), round(time.monotonic() - scene.began, 1))
    scene.report.notes.append(f"Twilio answered 503 to every SMS for {scene.sms_outage_seconds:g} s")


async def kill_one_of_two(scene: Scene) -> None:
    """SIGKILL the first worker mid-flight, for good: its workflow tasks go
    back to the shared queue and its activities are retried once their
    timeouts pass, all on the survivor. Mid-flight is measured: once the
    first worker has settled about one message per order, a ninth of the
    journeys' messages, with orders still being driven."""
    victim, survivor = scene.workers
    settled_by_victim = 0
    while not scene.driving.done():
        settled_by_victim = await messages_settled(victim)
        if settled_by_victim >= scene.report.orders:
            victim.kill()
            scene.report.notes.append(
                f"SIGKILL of worker 1 of 2 at {time.strftime('%X')}, after it settled {settled_by_victim} messages; not restarted"
            )
            break
        await asyncio.sleep(0.5)
    else:
        scene.report.not_disrupted = f"worker 1 settled only {settled_by_victim} messages before the orders were driven: never killed"
    await scene.driving
    scene.report.messages_settled_by_worker = [settled_by_victim, await messages_settled(survivor)]


async def messages_settled(worker: WorkerProcess) -> int:
    return int(total(parse(await scrape(int(worker.env["METRICS_PORT"]))), "orders_messages_total"))


async def nothing_to_break(scene: Scene) -> None:
    """provider-faults: the fake providers misbehave all along."""


DRILLS: dict[str, Callable[[Scene], Awaitable[None]]] = {
    "kill-worker": kill_worker,
    "deploy": deploy,
    "provider-faults": nothing_to_break,
    "postgres-outage": stop_postgres,
    "temporal-restart": restart_temporal,
    "channel-outage": sms_outage,
    "two-workers": kill_one_of_two,
    "kill-and-faults": functools.partial(kill_worker, kills=KILLS_AMID_FAULTS),
}

# Drills whose fake providers misbehave all along: the share of requests
# answered 429/5xx, and of those taken but answered only after the client's
# timeout (PROVIDER_TIMEOUT_SECONDS, short in these drills).
PROVIDER_FAULTS = {"provider-faults": (0.3, 0.03), "kill-and-faults": (0.1, 0.1)}
FAULTY_PROVIDER_TIMEOUT = 1.0


def fake_providers_for(drill: str, provider_timeout: float, email_activity_lag: float) -> FakeProviders:
    fakes = FakeProviders(keep_requests=False, email_activity_lag=email_activity_lag)
    if drill in PROVIDER_FAULTS:
        fakes.fault_rate, fakes.hang_rate = PROVIDER_FAULTS[drill]
        fakes.hang_seconds = provider_timeout + 1.5
    return fakes


def orders_for(drill: str, orders: int) -> list[dict[str, Any]]:
    run = new_run_id()
    batch = [bench_order(n, run) for n in range(orders)]
    if drill == "provider-faults":
        for order in batch[::10]:  # refused for good: the SMS carries what the mail could not
            order["customer"]["email"] = f"{order['order_id']}@{BOUNCING_EMAIL_DOMAIN}"
    if drill in REPORTED:
        for order in batch[5::10]:  # taken, then reported bounced: the SMS carries it
            order["customer"]["email"] = f"{order['order_id']}@{BOUNCES_LATER_DOMAIN}"
    return batch


def driving_for(drill: str, sms_outage_seconds: float) -> dict[str, Any]:
    """How the driver paces orders. In channel-outage, orders keep coming
    throughout the outage and move on as soon as their mails arrive: SMS
    held up by the outage may be overtaken and never sent."""
    if drill == "channel-outage":
        return {"await_sms": False, "start_over": sms_outage_seconds + 2 * OUTAGE_MARGIN_SECONDS}
    return {}


async def run_drill(
    drill: str,
    orders: int,
    concurrency: int,
    sms_outage_seconds: float = SMS_OUTAGE_SECONDS,
    email_activity_lag: float = EMAIL_ACTIVITY_LAG_SECONDS,
) -> DrillReport:
    provider_timeout = FAULTY_PROVIDER_TIMEOUT if drill in PROVIDER_FAULTS else 5.0
    fakes = fake_providers_for(drill, provider_timeout, email_activity_lag)
    stack = await start_stack(persistent_temporal=drill == "temporal-restart", fakes=fakes)
    report = DrillReport(drill, orders)
    try:
        # Its own client, so it outlives a restart of the dev server. Like a
        # shop's backend, it keeps retrying calls (waiting on a result, a
        # signal) through an outage longer than the SDK's default 10 s.
        client = await Client.connect(
            stack.temporal_address, data_converter=encrypted_data_converter(stack.data_keys()), retry_config=RIDE_OUT_OUTAGES
        )
        extra = {"SENDGRID_SETTLE_AFTER": SETTLE_AFTER}
        reports = None
        if drill in REPORTED:
            web_port, web_metrics_port, (sendgrid_key, sendgrid_public_key) = free_port(), free_port(), new_key_pair()
            stack.our_web(web_port, sendgrid_public_key, web_metrics_port).start()
            web_url = f"http://127.0.0.1:{web_port}"
            reports = ProviderReports(web_url, sendgrid_key, TWILIO_TOKEN)
            extra.update(WEB_PUBLIC_URL=web_url, JOURNEY_REPORT_WINDOW=REPORT_WINDOW)
        # Each on its own metrics port, as several workers on one host must be.
        workers = [
            stack.our_worker(provider_timeout=provider_timeout, extra={**extra, "METRICS_PORT": str(free_port())})
            for _ in range(WORKERS.get(drill, 1))
        ]
        for worker in workers:
            worker.start()
        # Each process by its own identity; several starting at once on a
        # loaded machine (CI runs drills side by side) may take minutes.
        for worker in workers:
            await wait_for_pollers(stack, worker=worker, timeout=STARTUP_TIMEOUT)
        tracker = Tracker()
        stack.fakes.on_accept = tracker.on_provider_request if reports is None else both(tracker.on_provider_request, reports.on_accept)
        batch = orders_for(drill, orders)
        began = time.monotonic()
        driving = asyncio.create_task(
            drive(
                System(client, floor=False), tracker, batch, concurrency, timeout=600, patience=30,
                **driving_for(drill, sms_outage_seconds),
            )
        )
        await DRILLS[drill](Scene(stack, workers, report, driving, began, sms_outage_seconds))
        runs, _ = await driving
        report.seconds = round(time.monotonic() - began, 1)
        if reports:
            await asyncio.to_thread(reports.drain)
            await reports_heard(stack, report, reports, web_metrics_port)
        await audit(stack, report, runs, batch)
        if report.sms_outage:
            outage_began, outage_ended = (began + t for t in report.sms_outage)
            report.email_latency_ms = email_latencies(runs, list(stack.fakes.accepted), outage_began, outage_ended)
    finally:
        if reports:
            reports.close()
        await stack.shutdown()
    return report


def both(*callbacks: Callable[[AcceptedMessage], None]) -> Callable[[AcceptedMessage], None]:
    def call(message: AcceptedMessage) -> None:
        for callback in callbacks:
            callback(message)

    return call


REPORT_COUNTS = """
SELECT count(*) FILTER (WHERE signal IS NOT NULL AND signal_name = 'message_undelivered') AS undelivered,
       count(*) FILTER (WHERE workflow_ended) AS after_the_order
FROM provider_events
"""


async def reports_heard(
    stack: Stack, report: DrillReport, reports: ProviderReports, web_metrics_port: int, timeout: float = 90
) -> None:
    """Once every report is posted: until the HTTP service has delivered
    every signal they owe (its relay retries while Temporal is away), and
    how its signals went, from its metrics."""
    conn = await asyncpg.connect(stack.database_url)
    try:
        deadline = time.monotonic() + timeout
        while (owed := await provider_events.count_owed(conn)) and time.monotonic() < deadline:
            await asyncio.sleep(1)
        counts = await conn.fetchrow(REPORT_COUNTS)
    finally:
        await conn.close()
    report.reports_owed = owed
    signals: Counter[str] = Counter()
    for sample in parse(await scrape(web_metrics_port)):
        if sample.name == "orders_web_signals_total":
            signals[sample.labels["outcome"]] += int(sample.value)
    report.provider_reports = {
        # The HTTP service's signals by outcome; `unreachable` ones were retried.
        "signals": dict(signals),
        "posted": dict(reports.posted),
        "answers": {str(k): v for k, v in sorted(reports.answers.items())},
        "given_up": reports.gave_up,
        "reported_undelivered": counts["undelivered"],
        "after_the_order_was_over": counts["after_the_order"],
    }


def main(
    drills: list[str],
    orders: int,
    concurrency: int,
    sms_outage_seconds: float = SMS_OUTAGE_SECONDS,
    email_activity_lag: float = EMAIL_ACTIVITY_LAG_SECONDS,
) -> bool:
    ok = True
    for drill in drills:
        print(f"{drill}: {orders} orders, {concurrency} in flight ...", flush=True)
        report = asyncio.run(run_drill(drill, orders, concurrency, sms_outage_seconds, email_activity_lag))
        print(report.headline(), flush=True)
        print(json.dumps({**report.__dict__, "passed": report.passed}), flush=True)
        ok &= report.passed
    return ok
