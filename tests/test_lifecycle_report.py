"""`orders lifecycle report`: figures computed from rows written straight
into PostgreSQL. Each test works in its own past year (the database is shared
by the session, and nothing else writes there), with ids unique to the test.
Phases at a period's end also count customers of earlier years, so phase
counts are compared with the report as it was before the test's rows."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import uuid
from datetime import date, datetime, timezone
from decimal import Decimal
from pathlib import Path

import asyncpg
import pytest

from starter.lifecycle_report import PeriodRow, format_report, lifecycle_report, periods_between

# A year of its own for each test: 1901, 1902, ... (other tests write today's dates).
_years = itertools.count(1901)


def at(year: int, month: int, day: int, hour: int = 12) -> datetime:
    return datetime(year, month, day, hour, tzinfo=timezone.utc)


class Rows:
    """Inserts with ids unique to one test."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.tag = uuid.uuid4().hex[:8]

    def id(self, name: str) -> str:
        return f"{name}-{self.tag}"

    async def customer(self, name: str) -> str:
        cid = self.id(name)
        await self.pool.execute(
            "INSERT INTO customers (customer_id, name, email, phone, timezone) VALUES ($1, $2, $3, $4, 'UTC')",
            cid, name, f"{cid}@example.com", "+48600100200",
        )
        return cid

    async def phases(self, cid: str, *changes: tuple[str, datetime]) -> None:
        await self.pool.executemany(
            "INSERT INTO customer_phase_changes (customer_id, phase, at) VALUES ($1, $2, $3)",
            [(cid, phase, when) for phase, when in changes],
        )

    async def order(self, cid: str, name: str, total: str, when: datetime, *, currency: str = "EUR", status: str = "open") -> str:
        oid = self.id(name)
        await self.pool.execute(
            "INSERT INTO orders (order_id, customer_id, seller_id, seller_name, placed_at, currency, total, delivery_method, status) "
            "VALUES ($1, $2, 'S1', 'Seller', $3, $4, $5, 'address', $6)",
            oid, cid, when, currency, Decimal(total), status,
        )
        return oid

    async def coupon(self, cid: str, milestone: str, issued: datetime, *, percent: int | None = None,
                     free_shipping: bool = False, redeemed_by: str | None = None) -> str:
        code = self.id(f"CODE-{milestone}-{cid}")
        await self.pool.execute(
            "INSERT INTO coupons (code, customer_id, milestone, discount_percent, free_shipping, issued_at, expires_at, "
            "redeemed_order_id, redeemed_at) VALUES ($1, $2, $3, $4, $5, $6::timestamptz, $6::timestamptz + interval '30 days', $7, $8)",
            code, cid, milestone, percent, free_shipping, issued, redeemed_by, issued if redeemed_by else None,
        )
        return code

    async def lapse(self, cid: str, group: str, lapsed: datetime, *, no: int = 1, coupon: str | None = None,
                    reorder: tuple[str, datetime] | None = None, churned: datetime | None = None) -> None:
        await self.pool.execute(
            "INSERT INTO win_backs (customer_id, lapse_no, grp, lapsed_at, coupon_code, reordered_order_id, reordered_at, churned_at) "
            "VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            cid, no, group, lapsed, coupon, reorder[0] if reorder else None, reorder[1] if reorder else None, churned,
        )


def by_label(rows: list[PeriodRow], period: str = "month") -> dict[str, PeriodRow]:
    return {r.label(period): r for r in rows}


def added(before: list[PeriodRow], after: list[PeriodRow]) -> list[dict[str, int]]:
    """Customers per phase at each period's end, less those counted before."""
    assert [r.start for r in before] == [r.start for r in after]
    return [{p: a.phases[p] - b.phases[p] for p in a.phases} for b, a in zip(before, after)]


def test_periods_cover_every_month_and_iso_week():
    assert periods_between(date(2025, 11, 15), date(2026, 2, 1), "month") == [
        (date(2025, 11, 1), date(2025, 12, 1)),
        (date(2025, 12, 1), date(2026, 1, 1)),
        (date(2026, 1, 1), date(2026, 2, 1)),
        (date(2026, 2, 1), date(2026, 3, 1)),
    ]
    # ISO weeks start on Monday: 2026-01-01 is a Thursday.
    assert periods_between(date(2026, 1, 1), date(2026, 1, 12), "week") == [
        (date(2025, 12, 29), date(2026, 1, 5)),
        (date(2026, 1, 5), date(2026, 1, 12)),
        (date(2026, 1, 12), date(2026, 1, 19)),
    ]


async def test_customers_per_phase_at_the_end_of_each_month(pool):
    y, r = next(_years), Rows(pool)
    before = await lifecycle_report(pool, since=date(y, 1, 1), until=date(y, 4, 30))
    weeks_before = await lifecycle_report(pool, period="week", since=date(y, 3, 1), until=date(y, 3, 31))
    ada, bob, cy, dee = [await r.customer(n) for n in ("ada", "bob", "cy", "dee")]
    await r.phases(ada, ("new", at(y, 1, 5)), ("active", at(y, 2, 10)), ("loyal", at(y, 3, 1)))
    await r.phases(bob, ("new", at(y, 1, 20)), ("lapsed", at(y, 3, 15)), ("churned", at(y, 3, 30)))
    # The first instant of February belongs to February, not to January.
    await r.phases(cy, ("new", at(y, 1, 3)), ("active", datetime(y, 2, 1, tzinfo=timezone.utc)))
    # Two changes in one month: only the later one counts at its end.
    await r.phases(dee, ("lapsed", at(y, 2, 2)), ("won_back", at(y, 2, 25)))

    rows = await lifecycle_report(pool, since=date(y, 1, 1), until=date(y, 4, 30))
    assert [r.label("month") for r in rows] == [f"{y}-01", f"{y}-02", f"{y}-03", f"{y}-04"]
    jan, feb, mar, apr = added(before, rows)
    assert jan == {"new": 3, "active": 0, "loyal": 0, "lapsed": 0, "churned": 0, "won_back": 0}
    assert feb == {"new": 1, "active": 2, "loyal": 0, "lapsed": 0, "churned": 0, "won_back": 1}
    assert mar == {"new": 0, "active": 1, "loyal": 1, "lapsed": 0, "churned": 1, "won_back": 1}
    # Nothing happened in April: everyone stays where March left them.
    assert apr == mar

    weeks = await lifecycle_report(pool, period="week", since=date(y, 3, 1), until=date(y, 3, 31))
    # Bob lapsed on the 15th and churned on the 30th: lapsed at the end of the weeks between.
    weekly = added(weeks_before, weeks)
    lapsed_weeks = [w.end for w, n in zip(weeks, weekly) if n["lapsed"] == 1]
    assert lapsed_weeks == [w.end for w in weeks if date(y, 3, 15) < w.end <= date(y, 3, 30)] and len(lapsed_weeks) == 2
    assert weekly[-1]["churned"] == 1 and weekly[-1]["lapsed"] == 0


async def test_win_back_against_the_holdout_and_the_money_of_won_back_orders(pool):
    y, r = next(_years), Rows(pool)
    feb = at(y, 2, 3)
    # Treated: four lapses in February, three came back (one of them in March).
    t = [await r.customer(f"t{n}") for n in range(4)]
    c0 = await r.coupon(t[0], "win_back-1", feb, percent=15)
    c1 = await r.coupon(t[1], "win_back-1", feb, free_shipping=True)
    o0 = await r.order(t[0], "o-t0", "100.00", at(y, 2, 20))
    o1 = await r.order(t[1], "o-t1", "40.00", at(y, 2, 21))
    o2 = await r.order(t[2], "o-t2", "60.00", at(y, 3, 2))  # no coupon used
    await pool.execute("UPDATE coupons SET redeemed_order_id = $1 WHERE code = $2", o0, c0)
    await pool.execute("UPDATE coupons SET redeemed_order_id = $1 WHERE code = $2", o1, c1)
    await r.lapse(t[0], "treated", feb, coupon=c0, reorder=(o0, at(y, 2, 20)))
    await r.lapse(t[1], "treated", feb, coupon=c1, reorder=(o1, at(y, 2, 21)))
    await r.lapse(t[2], "treated", feb, reorder=(o2, at(y, 3, 2)))
    await r.lapse(t[3], "treated", feb, churned=at(y, 3, 1))
    # Holdout: two lapses in February, one came back with an order of 500 and a
    # loyalty coupon: neither its revenue nor that coupon is the win-back's.
    h = [await r.customer(f"h{n}") for n in range(2)]
    oh = await r.order(h[0], "o-h0", "500.00", at(y, 2, 25))
    await r.coupon(h[0], "loyal-1", at(y, 1, 10), percent=50, redeemed_by=oh)
    await r.lapse(h[0], "holdout", feb, reorder=(oh, at(y, 2, 25)))
    await r.lapse(h[1], "holdout", feb, churned=at(y, 3, 1))

    rows = await lifecycle_report(pool, since=date(y, 2, 1), until=date(y, 3, 31), shipping_cost=Decimal("6.50"))
    feb_row, mar_row = by_label(rows)[f"{y}-02"], by_label(rows)[f"{y}-03"]

    assert feb_row.lapsed == {"treated": 4, "holdout": 2}
    assert feb_row.reordered == {"treated": 3, "holdout": 1}
    assert feb_row.reorder_text("treated") == "3/4 75.0%"
    assert feb_row.reorder_text("holdout") == "1/2 50.0%"
    assert mar_row.lapsed == {"treated": 0, "holdout": 0} and mar_row.reorder_text("treated") == "0/0 -"

    # Won-back orders by the month they were placed: February has t0 and t1 ...
    [money] = feb_row.money
    assert (money.currency, money.orders) == ("EUR", 2)
    assert money.revenue == Decimal("140.00")  # the holdout's 500 would make it 640
    assert money.coupon_cost == Decimal("21.50")  # 15 % of 100 + 6.50 shipping; the holdout's 250 stays out
    assert money.cost_share == "15.4%"
    # ... and March has t2, without a coupon.
    [money] = mar_row.money
    assert (money.orders, money.revenue, money.coupon_cost) == (1, Decimal("60.00"), Decimal("0"))

    # The default shipping cost is 4.99.
    rows = await lifecycle_report(pool, since=date(y, 2, 1), until=date(y, 2, 28))
    assert rows[0].money[0].coupon_cost == Decimal("19.99")

    text = format_report(rows)
    assert "3/4 75.0%" in text and "1/2 50.0%" in text and "140.00" in text and "19.99" in text
    assert "All money in EUR." in text


async def test_money_per_currency_and_cancelled_won_back_orders_left_out(pool):
    y, r = next(_years), Rows(pool)
    may = at(y, 5, 2)
    a, b, c = [await r.customer(n) for n in ("eur", "pln", "cancelled")]
    oa = await r.order(a, "o-eur", "80.00", at(y, 5, 10), currency="EUR")
    ob = await r.order(b, "o-pln", "300.00", at(y, 5, 11), currency="PLN")
    oc = await r.order(c, "o-cancelled", "999.00", at(y, 5, 12), currency="EUR", status="cancelled")
    await r.coupon(a, "win_back-1", may, percent=10, redeemed_by=oa)
    await r.coupon(b, "win_back-1", may, percent=20, free_shipping=True, redeemed_by=ob)
    await r.coupon(c, "win_back-1", may, percent=50, redeemed_by=oc)
    await r.lapse(a, "treated", may, reorder=(oa, at(y, 5, 10)))
    await r.lapse(b, "treated", may, reorder=(ob, at(y, 5, 11)))
    await r.lapse(c, "treated", may, reorder=(oc, at(y, 5, 12)))

    [row] = await lifecycle_report(pool, since=date(y, 5, 1), until=date(y, 5, 31))
    # A cancelled order re-orders all the same, but brings in nothing.
    assert row.reorder_text("treated") == "3/3 100.0%"
    eur, pln = row.money
    assert (eur.currency, eur.orders, eur.revenue, eur.coupon_cost) == ("EUR", 1, Decimal("80.00"), Decimal("8.00"))
    # A coupon with both: the discount and the shipping.
    assert (pln.currency, pln.orders, pln.revenue, pln.coupon_cost) == ("PLN", 1, Decimal("300.00"), Decimal("64.99"))

    text = format_report([row])
    assert "2 currencies (EUR, PLN)" in text and "never summed" in text
    lines = text.splitlines()
    assert any("PLN" in line and "300.00" in line and "64.99" in line for line in lines)
    assert any("EUR" in line and "80.00" in line and "8.00" in line for line in lines)


async def test_nothing_on_record_in_the_range(pool):
    y = next(_years)
    rows = await lifecycle_report(pool, since=date(y, 1, 1), until=date(y, 1, 31))
    assert len(rows) == 1 and rows[0].lapsed == {"treated": 0, "holdout": 0} and rows[0].money == []
    assert await lifecycle_report(pool, since=date(y, 2, 1), until=date(y, 1, 1)) == []
    with pytest.raises(ValueError):
        await lifecycle_report(pool, period="year", since=date(y, 1, 1))


async def test_the_orders_command_prints_the_report(pool, database_url):
    y, r = next(_years), Rows(pool)
    cid = await r.customer("cli")
    oid = await r.order(cid, "o-cli", "50.00", at(y, 6, 20))
    await r.coupon(cid, "win_back-1", at(y, 6, 1), free_shipping=True, redeemed_by=oid)
    await r.phases(cid, ("active", at(y, 5, 1)), ("lapsed", at(y, 6, 1)), ("won_back", at(y, 6, 20)))
    await r.lapse(cid, "treated", at(y, 6, 1), reorder=(oid, at(y, 6, 20)))
    env = {**os.environ, "DATABASE_URL": database_url, "LIFECYCLE_SHIPPING_COST": "3.25"}
    result = subprocess.run(
        [sys.executable, "-m", "starter.cli", "lifecycle", "report", "--since", f"{y}-05-01", "--until", f"{y}-06-30"],
        env=env, capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    may = next(line for line in lines if line.startswith(f"{y}-05"))
    june = next(line for line in lines if line.startswith(f"{y}-06"))
    assert "1/1 100.0%" in june and "50.00" in june and "3.25" in june and "6.5%" in june
    assert "1/1" not in may
    assert "Customer lifecycle by month" in result.stdout

    weekly = subprocess.run(
        [sys.executable, "-m", "starter.cli", "lifecycle", "report", "--period", "week", "--since", f"{y}-06-15",
         "--until", f"{y}-06-21", "--shipping-cost", "1"],
        env=env, capture_output=True, text=True, cwd=Path(__file__).parent.parent, timeout=60,
    )
    assert weekly.returncode == 0, weekly.stderr
    assert "by week" in weekly.stdout and "1.00" in weekly.stdout
