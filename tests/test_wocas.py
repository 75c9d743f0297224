"""The WOCAS report's sections and the lifecycle metrics, each against
figures computed by hand on tests/wocas_fixture.py's week."""

from __future__ import annotations

from datetime import timedelta

import asyncpg
import pytest

from reports.metrics import DEFINITIONS, lifecycle_metrics, targets_from_env
from reports.period import Period
from reports.wocas import Rating, Theme, build_report
from tests.wocas_fixture import UNTIL, at, load, private_database

DEFAULT_TARGETS = targets_from_env({})
PERIOD = Period.ending(UNTIL)


@pytest.fixture(scope="module")
async def week(database_url: str):
    async with private_database(database_url) as url:
        conn = await asyncpg.connect(url)
        try:
            await load(conn)
            yield conn
        finally:
            await conn.close()


@pytest.fixture(scope="module")
async def report(week: asyncpg.Connection):
    return await build_report(week, PERIOD, DEFAULT_TARGETS)


def test_the_period_is_the_seven_days_before_until_and_the_seven_before_that() -> None:
    assert (PERIOD.start, PERIOD.end) == (at("2030-01-08 00:00"), UNTIL)
    assert (PERIOD.previous.start, PERIOD.previous.end) == (at("2030-01-01 00:00"), at("2030-01-08 00:00"))


async def test_product_ratings_with_volume_and_trend(report) -> None:
    assert report.products == [
        Rating("B", "Mug", "kitchen", 1.5, 2, None, 0),
        Rating("A", "Lamp", "lighting", 4.0, 1, 2.0, 1),
        Rating("C", "Pan", "kitchen", 1.0, 1, None, 0),
    ]
    assert report.products[1].trend == 2.0 and report.products[0].trend is None


async def test_category_ratings_with_volume_and_trend(report) -> None:
    kitchen, lighting = report.categories
    assert (kitchen.key, kitchen.name, kitchen.count, kitchen.average_before, kitchen.count_before) == ("kitchen", "kitchen", 3, None, 0)
    assert kitchen.average == pytest.approx(4 / 3)
    assert (lighting.key, lighting.average, lighting.count, lighting.average_before, lighting.trend) == ("lighting", 4.0, 1, 2.0, 2.0)


async def test_seller_ratings_with_volume_and_trend(report) -> None:
    assert report.sellers == [
        Rating("S1", "Alpha Lights", None, 5.0, 1, 3.0, 1),
        Rating("S2", "Beta Kitchen", None, 1.0, 1, None, 0),
    ]


async def test_helpful_votes_per_touchpoint(report) -> None:
    dispatch, confirmation = report.votes
    assert (dispatch.kind, dispatch.votes, dispatch.helpful, dispatch.comments) == ("dispatch_notice", 2, 1, 1)
    assert (dispatch.rate, dispatch.rate_before) == (0.5, 0.5)
    assert (confirmation.kind, confirmation.votes, confirmation.helpful, confirmation.rate, confirmation.rate_before) == (
        "order_confirmation", 1, 1, 1.0, None,
    )


async def test_complaint_themes_from_low_ratings_not_helpful_votes_and_cases(report) -> None:
    # Three complaints this week (the 4-star comment is not one; last week's are out).
    assert report.complaints == 3
    assert report.themes == [
        Theme("box damaged", 2, 3),
        Theme("arrived broken", 2, 2),
        Theme("box", 1, 3),
        Theme("broken", 1, 3),
        Theme("damaged", 1, 3),
        Theme("arrived", 1, 2),
    ]


async def test_open_and_overdue_cases_with_their_owners(report) -> None:
    assert [(o.owner, o.open, o.acknowledged, o.escalated, o.overdue, o.oldest) for o in report.owners] == [
        ("kitchen-team", 0, 1, 1, 1, at("2030-01-09 13:00")),
        ("(no owner)", 1, 0, 0, 1, at("2030-01-13 09:00")),
        ("lighting-team", 1, 0, 0, 0, at("2030-01-12 09:00")),
    ]
    assert [(c.case_id, c.owner, c.status, c.escalation_level) for c in report.overdue] == [
        ("case-o3-1", "kitchen-team", "escalated", 2),
        ("case-o4-1", "(no owner)", "open", 0),
    ]
    assert report.overdue_total == 2


async def test_the_weeks_case_flow(report) -> None:
    flow = report.case_flow
    assert (flow.opened, flow.by_trigger) == (4, {"low_rating": 2, "not_helpful": 1, "complaint": 1})
    assert (flow.resolved, flow.reopened, flow.resolve_p50_hours) == (1, 0, 192.0)
    assert flow.by_status == {"open": 2, "acknowledged": 1, "escalated": 1}


async def test_deadline_breaches_per_seller(report) -> None:
    s1, s2 = report.breaches
    # o1's late dispatch told by email and SMS is one breach; o2's was last week.
    assert (s1.seller_id, s1.seller_name, s1.orders, s1.orders_before) == ("S1", "Alpha Lights", 2, 1)
    assert s1.now == {"late_dispatch": 1, "late_delivery": 0, "parcel_lost": 0, "locker_not_collected": 1}
    assert s1.before == {"late_dispatch": 1, "late_delivery": 0, "parcel_lost": 0, "locker_not_collected": 0}
    assert (s2.seller_id, s2.orders, s2.orders_before) == ("S2", 1, 0)
    assert s2.now == {"late_dispatch": 0, "late_delivery": 1, "parcel_lost": 1, "locker_not_collected": 0}
    assert report.breach_totals() == {"late_dispatch": 1, "late_delivery": 1, "parcel_lost": 1, "locker_not_collected": 1}


async def test_lifecycle_metrics_against_hand_computed_values(week) -> None:
    metrics = {m.definition.name: m for m in await lifecycle_metrics(week, PERIOD, DEFAULT_TARGETS)}
    assert list(metrics) == [d.name for d in DEFINITIONS]
    expected = {
        "activation_rate": 1 / 3,  # c5 of c5, c6 (second order too late), c7 (second cancelled)
        "repeat_customer_rate": 4 / 8,  # c1, c5, c6, c8 of 8
        "loyalty_rate": 2 / 5,  # c1, c8 loyal; c5's loyalty comes after the period
        "win_back_uplift": (1 / 2 - 1 / 3) * 100,  # treated 1/2, holdout 1/3 (h1 re-ordered after; h3 too early)
        "delivery_rate_email": 2 / 3,  # of 3 reported (4 sent)
        "delivery_rate_sms": 1 / 2,
        "helpful_rate": 2 / 3,
        "case_sla_breach_rate": 1 / 4,
        "payment_to_dispatch_p50_hours": 24.0,  # 6, 24, 36 hours
        "payment_to_dispatch_p90_hours": 33.6,
        "dispatch_to_delivery_p50_hours": 54.0,  # 48, 48, 60, 130 hours
        "dispatch_to_delivery_p90_hours": 109.0,
    }
    assert {name: m.value for name, m in metrics.items()} == pytest.approx(expected)
    assert metrics["delivery_rate_email"].basis == "2 of 3 reported (4 sent)"
    assert metrics["win_back_uplift"].basis == "treated 1/2 vs holdout 1/3"


async def test_mail_to_staff_and_was_this_resolved_votes_count_in_no_customer_rate(week) -> None:
    """A case's mail to its owner bounced, a customer said no to "Was this
    resolved?": neither is about a message to a customer."""
    def rates(metrics) -> dict[str, float | None]:
        return {m.definition.name: m.value for m in metrics if m.definition.name in ("delivery_rate_email", "helpful_rate")}

    before = rates(await lifecycle_metrics(week, PERIOD, DEFAULT_TARGETS))
    during = PERIOD.start + timedelta(hours=1)
    transaction = week.transaction()
    await transaction.start()
    try:
        await week.execute(
            "INSERT INTO message_ledger (key, order_id, kind, channel, recipient, state, sent_at, delivery, created_at, message_class) "
            "VALUES ('case-o1-1:case_assigned:round-1:email', 'o1', 'case_assigned', 'email', 'team', 'sent', $1, 'bounced', $1, 'staff')",
            during,
        )
        await week.execute(
            "INSERT INTO message_votes (ledger_key, order_id, kind, channel, helpful, voted_at) "
            "VALUES ('case-o1-1:case_outcome:round-1:email', 'o1', 'case_outcome', 'email', false, $1)",
            during,
        )
        after = rates(await lifecycle_metrics(week, PERIOD, DEFAULT_TARGETS))
    finally:
        await transaction.rollback()
    assert after == before


async def test_each_metric_is_marked_above_or_below_its_target(week) -> None:
    targets = DEFAULT_TARGETS | {"activation_rate": 0.5, "payment_to_dispatch_p50_hours": 25.0, "payment_to_dispatch_p90_hours": 30.0}
    metrics = {m.definition.name: m for m in await lifecycle_metrics(week, PERIOD, targets)}
    assert (metrics["activation_rate"].position, metrics["activation_rate"].meets_target) == ("below", False)
    assert (metrics["helpful_rate"].position, metrics["helpful_rate"].meets_target) == ("below", False)  # 0.67 < 0.8
    assert (metrics["repeat_customer_rate"].position, metrics["repeat_customer_rate"].meets_target) == ("above", True)
    # Lower is better: above the target misses it.
    assert (metrics["payment_to_dispatch_p90_hours"].position, metrics["payment_to_dispatch_p90_hours"].meets_target) == ("above", False)
    assert (metrics["payment_to_dispatch_p50_hours"].position, metrics["payment_to_dispatch_p50_hours"].meets_target) == ("below", True)


async def test_an_empty_period_has_no_values_and_no_errors(week) -> None:
    empty = Period.ending(UNTIL + timedelta(days=400))
    report = await build_report(week, empty, DEFAULT_TARGETS)
    assert (report.products, report.categories, report.sellers, report.votes, report.themes) == ([], [], [], [], [])
    assert report.complaints == 0 and report.case_flow.opened == 0
    values = {m.definition.name: m.value for m in report.metrics}
    assert values["helpful_rate"] is None and values["payment_to_dispatch_p50_hours"] is None
    assert all(m.position is None for m in report.metrics if m.value is None)


async def test_a_leads_email_carries_only_their_sections_with_inline_charts(report) -> None:
    from reports.config import Lead
    from reports.render import render_email

    email = render_email(report, Lead("Dana", "dana@shop.example", ("delivery",)))
    assert [cid for cid, _ in email.images] == ["wocas-deadline_breaches"]
    assert all(png.startswith(b"\x89PNG") for _, png in email.images)
    assert 'src="cid:wocas-deadline_breaches"' in email.html
    assert 'id="delivery"' in email.html and 'id="sellers"' not in email.html and 'id="customer_service"' not in email.html
    assert "Lifecycle metrics" in email.html  # the headline goes to everyone
    sections = {line.split(",")[0] for line in email.csv.splitlines()[1:]}
    assert sections == {"lifecycle", "delivery"}


async def test_the_folder_has_the_page_its_charts_and_the_figures(report, tmp_path) -> None:
    from reports.render import write_folder

    index = write_folder(report, tmp_path / "wocas")
    page = index.read_text()
    for section in ("sellers", "categories", "delivery", "customer_service"):
        assert f'id="{section}"' in page
    charts = sorted(p.name for p in index.parent.glob("*.png"))
    assert charts == ["cases_by_status.png", "deadline_breaches.png", "helpful_by_touchpoint.png", "ratings_by_category.png"]
    assert all(f'src="{name}"' in page for name in charts)
    assert "Alpha Lights" in page and "box damaged" in page and "case-o3-1" in page
    figures = (index.parent / "figures.csv").read_text().splitlines()
    assert figures[0] == "section,subject,figure,value,previous"
    assert "sellers,S1,average_stars,5,3" in figures
    assert "customer_service,theme:box damaged,complaints,3," in figures
