"""The WOCAS report's configuration, the history generator and the commands
(`orders seed-history`, `orders report wocas`, `orders metrics`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import asyncpg
import pytest

from reports.config import Lead, ReportConfigError, parse_leads
from reports.metrics import targets_from_env
from reports.seed import SeedRefused, generate, seed_history
from tests.wocas_fixture import private_database

REPO = Path(__file__).resolve().parents[1]
UNTIL = datetime(2026, 3, 2, tzinfo=timezone.utc)


def test_leads_are_read_with_their_sections_in_report_order() -> None:
    leads = parse_leads(json.dumps([
        {"name": "Sam", "email": "sam@shop.example", "sections": ["customer_service", "sellers"]},
        {"name": "Dana", "email": "dana@shop.example", "sections": ["delivery"]},
    ]))
    assert leads == [
        Lead("Sam", "sam@shop.example", ("sellers", "customer_service")),
        Lead("Dana", "dana@shop.example", ("delivery",)),
    ]
    assert parse_leads(None) == [] and parse_leads("  ") == []


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("{not json", "WOCAS_LEADS is not JSON"),
        ('{"name": "Sam"}', "must be a JSON list"),
        ('["Sam"]', "entry 1 must be an object"),
        ('[{"email": "sam@shop.example", "sections": ["sellers"]}]', 'entry 1 needs a "name"'),
        ('[{"name": "Sam", "email": "sam at shop", "sections": ["sellers"]}]', 'entry 1 (Sam) needs an "email"'),
        ('[{"name": "Sam", "email": "sam@shop.example", "sections": []}]', 'needs "sections"'),
        ('[{"name": "Sam", "email": "sam@shop.example", "sections": ["finance"]}]', "unknown section(s) finance; one of: sellers"),
        ('[{"name": "Sam", "email": "sam@shop.example", "sections": ["sellers"], "phone": "1"}]', "unknown field(s) phone"),
        (
            '[{"name": "Sam", "email": "sam@shop.example", "sections": ["sellers"]},'
            ' {"name": "Kim", "email": "SAM@shop.example", "sections": ["delivery"]}]',
            "entry 2 (Kim) repeats an email address",
        ),
    ],
)
def test_a_wrong_leads_configuration_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(ReportConfigError) as err:
        parse_leads(text)
    assert says in str(err.value)


def test_metric_targets_come_from_the_environment_with_clear_errors() -> None:
    assert targets_from_env({"METRIC_TARGET_HELPFUL_RATE": "0.9"})["helpful_rate"] == 0.9
    assert targets_from_env({})["activation_rate"] == 0.30
    with pytest.raises(ReportConfigError, match="METRIC_TARGET_HELPFUL_RATE='90%' is not a number"):
        targets_from_env({"METRIC_TARGET_HELPFUL_RATE": "90%"})
    with pytest.raises(ReportConfigError, match="a share is a fraction between 0 and 1"):
        targets_from_env({"METRIC_TARGET_ACTIVATION_RATE": "30"})


def test_the_history_is_the_same_for_the_same_seed() -> None:
    first, again, other = generate(400, 7, UNTIL), generate(400, 7, UNTIL), generate(400, 8, UNTIL)
    assert first == again
    assert first.orders != other.orders
    assert len(first.orders) == 400
    # Nothing happens after the year's end.
    assert max(o[4] for o in first.orders) < UNTIL
    assert max(r[7] for r in first.message_ledger) < UNTIL


def test_the_history_has_cases_in_every_state_and_every_journey_breach() -> None:
    history = generate(50_000, 1, UNTIL)
    assert {c[10] for c in history.cases} == {"open", "acknowledged", "escalated", "resolved"}
    assert {c[3] for c in history.cases} == {"low_rating", "not_helpful", "complaint"}
    assert {"dispatch_delayed", "delivery_delayed", "parcel_lost"} <= {r[2] for r in history.message_ledger}
    assert any(o[14] for o in history.orders)  # a locker not collected
    assert {w[2] for w in history.win_backs} == {"treated", "holdout"}


async def test_seeding_refuses_a_database_that_holds_orders_unless_forced(database_url: str) -> None:
    async with private_database(database_url) as url:
        conn = await asyncpg.connect(url)
        try:
            counts = await seed_history(conn, 200, 1, UNTIL)
            assert counts["orders"] == 200 == await conn.fetchval("SELECT count(*) FROM orders")
            with pytest.raises(SeedRefused, match="already holds orders"):
                await seed_history(conn, 200, 2, UNTIL)
            await seed_history(conn, 200, 2, UNTIL, force=True)
            assert await conn.fetchval("SELECT count(*) FROM orders") == 400
        finally:
            await conn.close()


def orders_cli(url: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "starter.cli", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


async def test_the_commands_seed_report_and_measure(database_url: str, tmp_path: Path) -> None:
    async with private_database(database_url) as url:
        seeded = orders_cli(url, "seed-history", "--orders", "1500", "--seed", "3", "--until", "2026-03-02")
        assert seeded.returncode == 0, seeded.stderr
        assert "1500 orders" in seeded.stdout
        again = orders_cli(url, "seed-history", "--orders", "10", "--until", "2026-03-02")
        assert again.returncode == 2 and "already holds orders" in again.stderr

        built = orders_cli(url, "report", "wocas", "--until", "2026-03-02", "--out", str(tmp_path / "wocas"))
        assert built.returncode == 0, built.stderr
        index = Path(built.stdout.strip())
        assert index == tmp_path / "wocas" / "index.html" and "What our customers are saying" in index.read_text()
        assert len(list(index.parent.glob("*.png"))) == 4

        measured = orders_cli(url, "metrics", "--until", "2026-03-02")
        assert measured.returncode == 0, measured.stderr
        assert "Activation (2nd order within 90 days)" in measured.stdout and "target" in measured.stdout

        wrong = orders_cli(url, "metrics", "--until", "last week")
        assert wrong.returncode == 2 and "is not a day like 2026-03-02" in wrong.stderr
        env_target = subprocess.run(
            [sys.executable, "-m", "starter.cli", "metrics"], cwd=REPO, capture_output=True, text=True, timeout=120,
            env={**os.environ, "DATABASE_URL": url, "METRIC_TARGET_LOYALTY_RATE": "lots"},
        )
        assert env_target.returncode == 2 and "METRIC_TARGET_LOYALTY_RATE='lots' is not a number" in env_target.stderr
