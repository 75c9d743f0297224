"""Calendar arithmetic in the customer's timezone, for the workflows and for
the messages that show their dates (messages/templates.py); and durations as
settings write them (`parse_duration`, for the worker's and the HTTP
service's configuration).

Workflow code: whether a timezone exists and where its day ends must come out
the same on every worker and on replay, so zones come only from the `tzdata`
package, pinned in pyproject.toml, never from the machine's own database.
Upgrading that pin is a workflow change: run the replay tests.

Imported by the workflow with the sandbox passed through: zoneinfo objects do
not survive the sandbox's proxies.
"""

import re
from datetime import date, datetime, time, timedelta, timezone, tzinfo
from functools import cache
from importlib import resources
from zoneinfo import ZoneInfo

KNOWN_ZONES = frozenset(resources.files("tzdata").joinpath("zones").read_text().split())


@cache
def zone(tz_name: str) -> tzinfo:
    """The zone from the pinned database; UTC for a name it does not know."""
    if tz_name not in KNOWN_ZONES:
        return timezone.utc
    with resources.files("tzdata").joinpath("zoneinfo", *tz_name.split("/")).open("rb") as data:
        return ZoneInfo.from_file(data, key=tz_name)


def end_of_local_day(day: date, tz_name: str) -> datetime:
    return datetime.combine(day + timedelta(days=1), time(0), zone(tz_name)).astimezone(timezone.utc)


def is_known_timezone(tz_name: str) -> bool:
    return tz_name in KNOWN_ZONES


def local_date(moment: datetime, tz_name: str) -> date:
    return moment.astimezone(zone(tz_name)).date()


def quiet_hours_end(moment: datetime, tz_name: str, quiet_from: timedelta, quiet_until: timedelta) -> datetime | None:
    """When the quiet hours around `moment` end in the customer's timezone,
    or None when `moment` is outside them. `quiet_from` and `quiet_until` are
    times of day; from 21h to 8h spans midnight. Equal values: never quiet."""
    if quiet_from == quiet_until:
        return None
    tz = zone(tz_name)
    local = moment.astimezone(tz)
    now = local - datetime.combine(local.date(), time(0), tz)
    ends_today = datetime.combine(local.date(), time(0), tz) + quiet_until
    if quiet_from > quiet_until:  # spans midnight
        if now >= quiet_from:
            end = ends_today + timedelta(days=1)
        elif now < quiet_until:
            end = ends_today
        else:
            return None
    elif quiet_from <= now < quiet_until:
        end = ends_today
    else:
        return None
    # Wall-clock arithmetic, then back to UTC: 08:00 stays 08:00 across DST.
    return datetime.combine(end.date(), (datetime.min + quiet_until).time(), tz).astimezone(timezone.utc)


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNITS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, None: 1}


def parse_duration(text: str) -> timedelta:
    """'90' (seconds), '500ms', '30s', '15m', '24h', '3d'."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 24h or 3d")
    return timedelta(seconds=float(match.group(1)) * _UNITS[match.group(2)])
