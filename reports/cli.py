"""The report's commands: `orders report wocas`, `orders metrics`,
`orders seed-history` (starter/cli.py wires them)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Mapping
from datetime import date, datetime, time, timezone
from pathlib import Path

import asyncpg

from reports.period import Period

DEFAULT_FOLDER = "wocas-reports"


def report_folder(env: Mapping[str, str], period: Period) -> Path:
    """Where a period's report is written unless told otherwise: WOCAS_REPORT_DIR/<period end>."""
    return Path(env.get("WOCAS_REPORT_DIR") or DEFAULT_FOLDER) / f"{period.end:%Y-%m-%dT%H%M}"


def _until(text: str) -> datetime:
    """A day (its 00:00 UTC: the report ends as it begins) or an ISO moment (UTC if no zone given)."""
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(0), tzinfo=timezone.utc)
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a day like 2026-03-02 or a moment like 2026-03-02T08:00+01:00") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of at least 1")
    return value


def _period_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--until", type=_until, help="end of the period, exclusive (a day: its 00:00 UTC; default: now)")
    parser.add_argument("--days", type=_positive, default=7, help="length of the period in days (default 7), compared with as many before")


def add_report_arguments(parser: argparse.ArgumentParser) -> None:
    _period_arguments(parser)
    parser.add_argument(
        "--mail", action="store_true",
        help="run the weekly report now through its Temporal Schedule: built by the worker and mailed to the leads (WOCAS_LEADS)",
    )
    parser.add_argument(
        "--out", type=Path,
        help=f"folder to write index.html, the charts and figures.csv to (default: WOCAS_REPORT_DIR, else {DEFAULT_FOLDER}/<period end>)",
    )


def add_metrics_arguments(parser: argparse.ArgumentParser) -> None:
    _period_arguments(parser)


def add_seed_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--orders", type=_positive, default=10_000, help="how many orders (default 10000)")
    parser.add_argument("--seed", type=int, default=1, help="the same seed and --until give the same history (default 1)")
    parser.add_argument("--until", type=_until, help="the year's end (default: today 00:00 UTC)")
    parser.add_argument("--force", action="store_true", help="add to a database that already holds orders")


async def _connect(database_url: str) -> asyncpg.Connection:
    conn = await asyncpg.connect(database_url)
    if not await conn.fetchval("SELECT to_regclass('cases') IS NOT NULL AND to_regclass('schema_migrations') IS NOT NULL"):
        await conn.close()
        raise SystemExit("error: the database is not migrated: start a worker (`orders up`) to migrate it")
    return conn


async def report(args: argparse.Namespace, database_url: str) -> Path:
    """Builds the report and writes its folder; returns index.html's path."""
    from reports.metrics import targets_from_env
    from reports.render import write_folder
    from reports.wocas import build_report

    period = Period.ending(args.until, args.days)
    targets = targets_from_env(os.environ)
    conn = await _connect(database_url)
    try:
        built = await build_report(conn, period, targets)
    finally:
        await conn.close()
    return write_folder(built, args.out or report_folder(os.environ, period))


async def metrics(args: argparse.Namespace, database_url: str) -> str:
    from reports.metrics import format_metrics, lifecycle_metrics, targets_from_env

    period = Period.ending(args.until, args.days)
    targets = targets_from_env(os.environ)
    conn = await _connect(database_url)
    try:
        return format_metrics(await lifecycle_metrics(conn, period, targets), period)
    finally:
        await conn.close()


async def seed(args: argparse.Namespace, database_url: str) -> str:
    from reports.seed import default_until, seed_history

    until = args.until or default_until()
    conn = await _connect(database_url)
    try:
        counts = await seed_history(conn, args.orders, args.seed, until, force=args.force)
    finally:
        await conn.close()
    return f"seeded a year to {until:%Y-%m-%d %H:%M} UTC (seed {args.seed}): " + ", ".join(f"{n} {t}" for t, n in counts.items())
