"""Calendar arithmetic in the customer's timezone.

Workflow code: whether a timezone exists and where its day ends must come out
the same on every worker and on replay, so zones come only from the `tzdata`
package, pinned in pyproject.toml, never from the machine's own database.
Upgrading that pin is a workflow change: run the replay tests.

Imported by the workflow with the sandbox passed through: zoneinfo objects do
not survive the sandbox's proxies.
"""

from datetime import date, datetime, time, timedelta, timezone, tzinfo
from functools import cache
from importlib import resources
from zoneinfo import ZoneInfo

KNOWN_ZONES = frozenset(resources.files("tzdata").joinpath("zones").read_text().split())


@cache
def _zone(tz_name: str) -> tzinfo:
    if tz_name not in KNOWN_ZONES:
        return timezone.utc
    with resources.files("tzdata").joinpath("zoneinfo", *tz_name.split("/")).open("rb") as data:
        return ZoneInfo.from_file(data, key=tz_name)


def end_of_local_day(day: date, tz_name: str) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(0), _zone(tz_name)).astimezone(timezone.utc)


def is_known_timezone(tz_name: str) -> bool:
    return tz_name in KNOWN_ZONES
