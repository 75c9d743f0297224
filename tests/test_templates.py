"""Messages show dates as the workflows reckon them: in the customer's
timezone, from the pinned tz database (workflows/clock.py)."""

from __future__ import annotations

import shutil
import zoneinfo
from importlib import resources
from pathlib import Path

from messages.templates import local_time


def test_a_message_shows_local_time_from_the_pinned_tz_database_not_the_machines(tmp_path: Path):
    """The workflow decides a locker deadline or quiet hours with the
    `tzdata` package; the message saying when must agree, whatever zone files
    the machine has (here, a machine whose Europe/Warsaw is UTC)."""
    (tmp_path / "Europe").mkdir()
    with resources.as_file(resources.files("tzdata").joinpath("zoneinfo", "UTC")) as utc:
        shutil.copy(utc, tmp_path / "Europe" / "Warsaw")
    zoneinfo.reset_tzpath([str(tmp_path)])
    zoneinfo.ZoneInfo.clear_cache()
    try:
        shown = local_time("2026-07-01T10:00:00+00:00", "Europe/Warsaw")
    finally:
        zoneinfo.reset_tzpath()
        zoneinfo.ZoneInfo.clear_cache()
    assert shown == "Wed 01 Jul 2026, 12:00 CEST"


def test_an_unknown_timezone_shows_utc():
    assert local_time("2026-07-01T10:00:00+00:00", "Mars/Olympus_Mons") == "Wed 01 Jul 2026, 10:00 UTC"
