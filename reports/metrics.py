"""Lifecycle metrics (`orders metrics`, and the report's headline), each
compared with a target from the environment (METRIC_TARGET_<NAME>, e.g.
METRIC_TARGET_ACTIVATION_RATE=0.3) and marked above or below it.

Windows, all ending at `until` (exclusive), cancelled orders left out:

- activation_rate: of customers whose first order was placed 180 to 90 days
  before `until` (a cohort whose 90 days have passed), the share with a second
  order within 90 days of the first;
- repeat_customer_rate: of customers with an order in the 365 days before
  `until`, the share with two or more there;
- loyalty_rate: of customers with a lifecycle phase (customer_phase_changes),
  the share whose latest phase before `until` is loyal;
- win_back_uplift: of lapses in the 365 days before `until` (win_backs), the
  re-order rate of the treated group minus the holdout's, in points;
- delivery_rate_email / delivery_rate_sms: of messages sent in the period
  whose delivery the provider reported, the share delivered;
- helpful_rate: of "Was this helpful?" votes in the period, the share yes;
- case_sla_breach_rate: of cases opened in the period, the share that missed
  an acknowledgement SLA at least once;
- payment_to_dispatch_p50/p90_hours: for orders dispatched in the period;
- dispatch_to_delivery_p50/p90_hours: for orders delivered in the period.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

import asyncpg

from reports.config import ReportConfigError
from reports.period import Period


@dataclass(frozen=True)
class MetricDefinition:
    name: str
    label: str
    unit: str  # "%" (a share, shown as a percentage), "pt" (percentage points), "h" (hours)
    higher_is_better: bool
    default_target: float

    @property
    def variable(self) -> str:
        return f"METRIC_TARGET_{self.name.upper()}"


DEFINITIONS = (
    MetricDefinition("activation_rate", "Activation (2nd order within 90 days)", "%", True, 0.30),
    MetricDefinition("repeat_customer_rate", "Repeat customers (last 365 days)", "%", True, 0.35),
    MetricDefinition("loyalty_rate", "Loyal customers", "%", True, 0.15),
    MetricDefinition("win_back_uplift", "Win-back re-orders vs holdout", "pt", True, 5.0),
    MetricDefinition("delivery_rate_email", "Email delivery rate", "%", True, 0.98),
    MetricDefinition("delivery_rate_sms", "SMS delivery rate", "%", True, 0.97),
    MetricDefinition("helpful_rate", "Messages found helpful", "%", True, 0.80),
    MetricDefinition("case_sla_breach_rate", "Cases that missed their SLA", "%", False, 0.05),
    MetricDefinition("payment_to_dispatch_p50_hours", "Payment to dispatch, median", "h", False, 24.0),
    MetricDefinition("payment_to_dispatch_p90_hours", "Payment to dispatch, 90th percentile", "h", False, 48.0),
    MetricDefinition("dispatch_to_delivery_p50_hours", "Dispatch to delivery, median", "h", False, 48.0),
    MetricDefinition("dispatch_to_delivery_p90_hours", "Dispatch to delivery, 90th percentile", "h", False, 96.0),
)


def targets_from_env(env: Mapping[str, str]) -> dict[str, float]:
    """Each metric's target: METRIC_TARGET_<NAME> if set, else its default.
    Shares are fractions (0.3 for 30%)."""
    targets = {}
    for d in DEFINITIONS:
        text = env.get(d.variable)
        if text is None or not text.strip():
            targets[d.name] = d.default_target
            continue
        try:
            value = float(text)
        except ValueError:
            raise ReportConfigError(f"{d.variable}={text!r} is not a number (default {d.default_target:g})") from None
        if d.unit == "%" and not 0 <= value <= 1:
            raise ReportConfigError(f"{d.variable}={text!r}: a share is a fraction between 0 and 1, like 0.3 for 30%")
        if d.unit == "h" and value <= 0:
            raise ReportConfigError(f"{d.variable}={text!r}: hours must be more than 0")
        targets[d.name] = value
    return targets


@dataclass(frozen=True)
class Metric:
    definition: MetricDefinition
    value: float | None  # None: nothing to measure in its window
    target: float
    # What the value is made of, e.g. "41 of 130 customers".
    basis: str

    @property
    def position(self) -> str | None:
        """'above' or 'below' the target ('above' when equal to it), None without a value."""
        if self.value is None:
            return None
        return "above" if self.value >= self.target else "below"

    @property
    def meets_target(self) -> bool | None:
        if self.value is None:
            return None
        return self.value >= self.target if self.definition.higher_is_better else self.value <= self.target

    def show(self, value: float | None = None) -> str:
        value = self.value if value is None else value
        if value is None:
            return "-"
        if self.definition.unit == "%":
            return f"{value * 100:.1f}%"
        if self.definition.unit == "pt":
            return f"{value:+.1f} pt"
        return f"{value:.1f} h"


# --- queries ------------------------------------------------------------------------

ACTIVATION = """
WITH firsts AS (
    SELECT customer_id, min(placed_at) AS first_at FROM orders WHERE status <> 'cancelled' GROUP BY customer_id
)
SELECT count(*) AS cohort,
       count(*) FILTER (WHERE EXISTS (
           SELECT 1 FROM orders o
           WHERE o.customer_id = f.customer_id AND o.status <> 'cancelled'
             AND o.placed_at > f.first_at AND o.placed_at <= f.first_at + interval '90 days'
       )) AS activated
FROM firsts f
WHERE f.first_at >= $1::timestamptz - interval '180 days' AND f.first_at < $1::timestamptz - interval '90 days'
"""

REPEAT = """
SELECT count(*) AS customers, count(*) FILTER (WHERE n >= 2) AS repeat
FROM (
    SELECT customer_id, count(*) AS n FROM orders
    WHERE status <> 'cancelled' AND placed_at >= $1::timestamptz - interval '365 days' AND placed_at < $1
    GROUP BY customer_id
) c
"""

LOYALTY = """
SELECT count(*) AS customers, count(*) FILTER (WHERE phase = 'loyal') AS loyal
FROM (
    SELECT DISTINCT ON (customer_id) customer_id, phase
    FROM customer_phase_changes WHERE at < $1
    ORDER BY customer_id, at DESC,
             array_position(ARRAY['new', 'active', 'loyal', 'lapsed', 'churned', 'won_back'], phase) DESC
) latest
"""

WIN_BACKS = """
SELECT grp, count(*) AS lapsed, count(*) FILTER (WHERE reordered_at < $1) AS reordered
FROM win_backs WHERE lapsed_at >= $1::timestamptz - interval '365 days' AND lapsed_at < $1
GROUP BY grp
"""

DELIVERY = """
SELECT channel, count(*) AS sent, count(delivery) AS reported, count(*) FILTER (WHERE delivery = 'delivered') AS delivered
FROM message_ledger WHERE state = 'sent' AND sent_at >= $1 AND sent_at < $2
  AND message_class IS DISTINCT FROM 'staff'  -- customers' messages, not mail to the team
GROUP BY channel
"""

HELPFUL = """
SELECT count(*) AS votes, count(*) FILTER (WHERE helpful) AS helpful
FROM message_votes WHERE voted_at >= $1 AND voted_at < $2
  AND kind <> 'case_outcome'  -- "Was this resolved?" is about the case, not the message
"""

SLA = """
SELECT count(*) AS cases, count(*) FILTER (WHERE sla_breaches > 0) AS breached
FROM cases WHERE opened_at >= $1 AND opened_at < $2
"""

TIMINGS = """
SELECT 'payment_to_dispatch' AS span, count(*) AS orders,
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM dispatched_at - paid_at)) / 3600 AS p50,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM dispatched_at - paid_at)) / 3600 AS p90
FROM orders WHERE dispatched_at >= $1 AND dispatched_at < $2 AND paid_at IS NOT NULL
UNION ALL
SELECT 'dispatch_to_delivery', count(*),
       percentile_cont(0.5) WITHIN GROUP (ORDER BY extract(epoch FROM delivered_at - dispatched_at)) / 3600,
       percentile_cont(0.9) WITHIN GROUP (ORDER BY extract(epoch FROM delivered_at - dispatched_at)) / 3600
FROM orders WHERE delivered_at >= $1 AND delivered_at < $2 AND dispatched_at IS NOT NULL
"""


def _share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


async def lifecycle_metrics(db: asyncpg.Pool | asyncpg.Connection, period: Period, targets: Mapping[str, float]) -> list[Metric]:
    """Every metric of DEFINITIONS, in that order."""
    until: datetime = period.end
    values: dict[str, tuple[float | None, str]] = {}

    a = await db.fetchrow(ACTIVATION, until)
    values["activation_rate"] = (_share(a["activated"], a["cohort"]), f"{a['activated']} of {a['cohort']} first-time customers")
    r = await db.fetchrow(REPEAT, until)
    values["repeat_customer_rate"] = (_share(r["repeat"], r["customers"]), f"{r['repeat']} of {r['customers']} customers")
    lo = await db.fetchrow(LOYALTY, until)
    values["loyalty_rate"] = (_share(lo["loyal"], lo["customers"]), f"{lo['loyal']} of {lo['customers']} customers")

    groups = {row["grp"]: row for row in await db.fetch(WIN_BACKS, until)}
    rates = {g: _share(groups[g]["reordered"], groups[g]["lapsed"]) if g in groups else None for g in ("treated", "holdout")}
    uplift = None if None in rates.values() else (rates["treated"] - rates["holdout"]) * 100
    values["win_back_uplift"] = (
        uplift,
        " vs ".join(
            f"{g} {groups[g]['reordered']}/{groups[g]['lapsed']}" if g in groups else f"{g} none" for g in ("treated", "holdout")
        ),
    )

    channels = {row["channel"]: row for row in await db.fetch(DELIVERY, period.start, until)}
    for channel in ("email", "sms"):
        c = channels.get(channel)
        values[f"delivery_rate_{channel}"] = (
            (_share(c["delivered"], c["reported"]), f"{c['delivered']} of {c['reported']} reported ({c['sent']} sent)")
            if c
            else (None, "none sent")
        )
    h = await db.fetchrow(HELPFUL, period.start, until)
    values["helpful_rate"] = (_share(h["helpful"], h["votes"]), f"{h['helpful']} of {h['votes']} votes")
    s = await db.fetchrow(SLA, period.start, until)
    values["case_sla_breach_rate"] = (_share(s["breached"], s["cases"]), f"{s['breached']} of {s['cases']} cases opened")
    for t in await db.fetch(TIMINGS, period.start, until):
        for q in ("p50", "p90"):
            values[f"{t['span']}_{q}_hours"] = (t[q], f"{t['orders']} orders")

    return [Metric(definition=d, value=values[d.name][0], target=targets[d.name], basis=values[d.name][1]) for d in DEFINITIONS]


def format_metrics(metrics: list[Metric], period: Period) -> str:
    """The table `orders metrics` prints."""
    rows = [
        (
            m.definition.label,
            m.show(),
            ("≥ " if m.definition.higher_is_better else "≤ ") + m.show(m.target),
            "-" if m.position is None else f"{m.position} target" + ("" if m.meets_target else " (!)"),
            m.basis,
        )
        for m in metrics
    ]
    header = ("metric", "value", "target", "", "based on")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    fmt = lambda r: "  ".join(c.ljust(w) if i in (0, 3, 4) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip()  # noqa: E731
    return "\n".join(
        [
            f"Lifecycle metrics, period {period.label} (UTC)",
            "",
            fmt(header),
            *(fmt(r) for r in rows),
            "",
            "(!) misses its target. Targets: METRIC_TARGET_<NAME> (shares as fractions, e.g. 0.3).",
        ]
    )

