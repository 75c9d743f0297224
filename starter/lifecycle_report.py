"""`orders lifecycle report`: the customer lifecycle per calendar month (or
ISO week), from what the CustomerJourney workflows write to PostgreSQL.

Per period (UTC):

- customers per phase at the end of the period: each customer's latest row
  in `customer_phase_changes` before the period's end (the first instant of
  the next period);
- lapses in the period (`win_backs.lapsed_at`), by group: `treated` (a
  win-back was sent) and `holdout` (none, to measure what the win-back adds);
- the re-order rate of each group: of those lapses, the share with an order
  placed after the lapse (`reordered_at` set), to date;
- won-back orders placed in the period (`win_backs` rows of the treated
  group with `reordered_order_id`, by `reordered_at`), cancelled ones left
  out: their revenue (sum of `orders.total`) and the cost of the coupons they
  redeemed (`coupons.redeemed_order_id`): `total * discount_percent / 100`,
  plus a flat shipping cost for a free-shipping coupon. Money is grouped by
  the orders' currency and never summed across currencies; the flat shipping
  cost counts in each order's currency.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal, InvalidOperation
from typing import Literal

import asyncpg

from workflows.models import CustomerPhase

Period = Literal["month", "week"]
PHASES = [p.value for p in CustomerPhase]  # new, active, loyal, lapsed, churned, won_back
GROUPS = ("treated", "holdout")
DEFAULT_SHIPPING_COST = Decimal("4.99")


@dataclass
class Money:
    """Won-back orders of one period in one currency."""

    currency: str
    orders: int
    revenue: Decimal
    coupon_cost: Decimal

    @property
    def cost_share(self) -> str:
        return f"{self.coupon_cost / self.revenue * 100:.1f}%" if self.revenue else "-"


@dataclass
class PeriodRow:
    start: date
    end: date  # exclusive: the next period's first day
    phases: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PHASES, 0))
    lapsed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0))
    reordered: dict[str, int] = field(default_factory=lambda: dict.fromkeys(GROUPS, 0))
    money: list[Money] = field(default_factory=list)  # one per currency, by currency

    def reorder_rate(self, group: str) -> float | None:
        return self.reordered[group] / self.lapsed[group] if self.lapsed[group] else None

    def reorder_text(self, group: str) -> str:
        rate = self.reorder_rate(group)
        return f"{self.reordered[group]}/{self.lapsed[group]} " + ("-" if rate is None else f"{rate * 100:.1f}%")

    def label(self, period: Period) -> str:
        if period == "month":
            return f"{self.start:%Y-%m}"
        iso = self.start.isocalendar()
        return f"{iso.year}-W{iso.week:02d} ({self.start:%b %d})"


# --- periods ----------------------------------------------------------------------


def period_start(day: date, period: Period) -> date:
    return day.replace(day=1) if period == "month" else day - timedelta(days=day.weekday())


def next_period(start: date, period: Period) -> date:
    if period == "week":
        return start + timedelta(days=7)
    return date(start.year + start.month // 12, start.month % 12 + 1, 1)


def periods_between(since: date, until: date, period: Period) -> list[tuple[date, date]]:
    """Every period from the one holding `since` to the one holding `until`."""
    out, start = [], period_start(since, period)
    while start <= until:
        end = next_period(start, period)
        out.append((start, end))
        start = end
    return out


def _instant(day: date) -> datetime:
    return datetime.combine(day, time(0), tzinfo=timezone.utc)


# --- queries ----------------------------------------------------------------------

PERIODS = "unnest($1::timestamptz[], $2::timestamptz[]) AS p(start_at, end_at)"

FIRST_ACTIVITY = """
SELECT least((SELECT min(at) FROM customer_phase_changes), (SELECT min(lapsed_at) FROM win_backs))
"""

# Each customer's latest phase before the end of each period. Ties (two
# changes at one instant) go to the later phase in lifecycle order.
PHASES_AT_END = f"""
SELECT p.start_at, latest.phase, count(*) AS customers
FROM {PERIODS}
CROSS JOIN LATERAL (
    SELECT DISTINCT ON (customer_id) customer_id, phase
    FROM customer_phase_changes
    WHERE at < p.end_at
    ORDER BY customer_id, at DESC,
             array_position(ARRAY['new', 'active', 'loyal', 'lapsed', 'churned', 'won_back'], phase) DESC
) latest
GROUP BY 1, 2
"""

LAPSES = f"""
SELECT p.start_at, w.grp, count(*) AS lapsed, count(w.reordered_at) AS reordered
FROM {PERIODS}
JOIN win_backs w ON w.lapsed_at >= p.start_at AND w.lapsed_at < p.end_at
GROUP BY 1, 2
"""

WON_BACK_MONEY = f"""
SELECT p.start_at, o.currency, count(*) AS orders, sum(o.total) AS revenue, sum(coalesce(c.cost, 0)) AS coupon_cost
FROM {PERIODS}
JOIN win_backs w
  ON w.grp = 'treated' AND w.reordered_order_id IS NOT NULL
 AND w.reordered_at >= p.start_at AND w.reordered_at < p.end_at
JOIN orders o ON o.order_id = w.reordered_order_id AND o.status <> 'cancelled'
LEFT JOIN LATERAL (
    SELECT sum(coalesce(o.total * c.discount_percent / 100, 0)
               + CASE WHEN c.free_shipping THEN $3::numeric ELSE 0 END) AS cost
    FROM coupons c WHERE c.redeemed_order_id = o.order_id
) c ON true
GROUP BY 1, 2
ORDER BY 1, 2
"""


async def lifecycle_report(
    db: asyncpg.Pool | asyncpg.Connection,
    *,
    period: Period = "month",
    since: date | None = None,
    until: date | None = None,
    shipping_cost: Decimal = DEFAULT_SHIPPING_COST,
) -> list[PeriodRow]:
    """One row per period from the one holding `since` (default: the first
    phase change or lapse on record) to the one holding `until` (default:
    today, UTC). Empty when there is nothing on record and no `since`."""
    if period not in ("month", "week"):
        raise ValueError(f"period is month or week, not {period!r}")
    until = until or datetime.now(timezone.utc).date()
    if since is None:
        first = await db.fetchval(FIRST_ACTIVITY)
        if first is None:
            return []
        since = first.astimezone(timezone.utc).date()
    spans = periods_between(since, until, period)
    if not spans:
        return []
    rows = {start: PeriodRow(start=start, end=end) for start, end in spans}
    starts = [_instant(s) for s, _ in spans]
    ends = [_instant(e) for _, e in spans]

    def row(at: datetime) -> PeriodRow:
        return rows[at.astimezone(timezone.utc).date()]

    for r in await db.fetch(PHASES_AT_END, starts, ends):
        row(r["start_at"]).phases[r["phase"]] = r["customers"]
    for r in await db.fetch(LAPSES, starts, ends):
        row(r["start_at"]).lapsed[r["grp"]] = r["lapsed"]
        row(r["start_at"]).reordered[r["grp"]] = r["reordered"]
    for r in await db.fetch(WON_BACK_MONEY, starts, ends, shipping_cost):
        row(r["start_at"]).money.append(
            Money(currency=r["currency"], orders=r["orders"], revenue=r["revenue"], coupon_cost=r["coupon_cost"])
        )
    return list(rows.values())


# --- the table ----------------------------------------------------------------------


def _money(value: Decimal) -> str:
    return f"{value.quantize(Decimal('0.01')):,}"


def format_report(rows: list[PeriodRow], period: Period = "month", shipping_cost: Decimal = DEFAULT_SHIPPING_COST) -> str:
    if not rows:
        return "No customer lifecycle data to report (nothing in customer_phase_changes or win_backs for that range)."
    # Column groups over the header: (title, number of columns).
    groups = [("", 1), ("customers at the period's end", len(PHASES)), ("lapsed", 2), ("re-ordered since", 2), ("won-back orders", 5)]
    header = ["period", *PHASES, "treated", "holdout", "treated", "holdout", "orders", "currency", "revenue", "coupon cost", "cost %"]
    left = {0, header.index("currency")}
    lines: list[list[str]] = []
    for r in rows:
        base = [
            r.label(period),
            *(str(r.phases[p]) for p in PHASES),
            str(r.lapsed["treated"]),
            str(r.lapsed["holdout"]),
            r.reorder_text("treated"),
            r.reorder_text("holdout"),
        ]
        if not r.money:
            lines.append(base + ["0", "", "-", "-", "-"])
        for n, m in enumerate(r.money):
            # A second currency in a period: its own line, the rest left blank.
            lead = base if n == 0 else [""] * len(base)
            lines.append(lead + [str(m.orders), m.currency, _money(m.revenue), _money(m.coupon_cost), m.cost_share])
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    gap = "  "
    # A group title wider than its columns widens the group's last column.
    first = 0
    for title, n in groups:
        span = sum(widths[first : first + n]) + len(gap) * (n - 1)
        widths[first + n - 1] += max(0, len(title) - span)
        first += n

    def fmt(cells: list[str]) -> str:
        return gap.join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    titles, rules, first = [], [], 0
    for title, n in groups:
        span = sum(widths[first : first + n]) + len(gap) * (n - 1)
        titles.append(title.center(span))
        rules.append(("-" * span) if title else " " * span)
        first += n

    currencies = sorted({m.currency for r in rows for m in r.money})
    out = [
        f"Customer lifecycle by {period} (UTC), {rows[0].label(period)} to {rows[-1].label(period)}",
        "",
        gap.join(titles).rstrip(),
        gap.join(rules).rstrip(),
        fmt(header),
        *(fmt(line) for line in lines),
        "",
        "customers at the period's end: each customer's latest phase change before the period ends.",
        "lapsed: customers who lapsed in the period; treated: a win-back was due (the group is recorded as they lapse,",
        "  so a win-back that consent or suppression stopped counts as treated too); holdout: none, by design.",
        "re-ordered since: of those lapses, how many have ordered again (to date), and the rate.",
        "won-back orders: orders placed in the period after a win-back (treated only; cancelled ones left out);",
        f"  coupon cost: discount_percent of the order's total, plus {shipping_cost} per free-shipping coupon.",
    ]
    if len(currencies) > 1:
        out.append(
            f"Money is in {len(currencies)} currencies ({', '.join(currencies)}): one line per currency, never summed across them; "
            f"the flat shipping cost counts in each order's currency."
        )
    elif currencies:
        out.append(f"All money in {currencies[0]}.")
    return "\n".join(out)


# --- command line -------------------------------------------------------------------


def _decimal(text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount like 4.99") from None
    if not value.is_finite() or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not an amount like 4.99")
    return value


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-01-31") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--period", choices=["month", "week"], default="month", help="calendar month (default) or ISO week, UTC")
    parser.add_argument("--since", type=_date, help="first day to report (default: the first lifecycle data on record)")
    parser.add_argument("--until", type=_date, help="last day to report (default: today, UTC)")
    parser.add_argument(
        "--shipping-cost",
        type=_decimal,  # also checks a default from the environment
        default=os.environ.get("LIFECYCLE_SHIPPING_COST") or str(DEFAULT_SHIPPING_COST),
        help=f"what a free-shipping coupon costs (default: LIFECYCLE_SHIPPING_COST, else {DEFAULT_SHIPPING_COST})",
    )


async def run(args: argparse.Namespace, database_url: str) -> str:
    """The report as printed by `orders lifecycle report`."""
    conn = await asyncpg.connect(database_url)
    try:
        rows = await lifecycle_report(conn, period=args.period, since=args.since, until=args.until, shipping_cost=args.shipping_cost)
    except asyncpg.UndefinedTableError:
        raise SystemExit("error: the database has no customer lifecycle tables yet: start a worker (`orders up`) to migrate it") from None
    finally:
        await conn.close()
    return format_report(rows, args.period, args.shipping_cost)
