"""Calendar arithmetic in the customer's timezone.

Imported by the workflow with the sandbox passed through: zoneinfo objects do
not survive the sandbox's proxies. The result depends only on the arguments
and the tz database, and it only sizes a timer, so replay stays deterministic.
"""

from datetime import date, datetime, time, timedelta, timezone
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError


def end_of_local_day(day: date, tz_name: str) -> datetime:
    try:
        tz = ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        tz = timezone.utc
    return datetime.combine(day + timedelta(days=1), time(0), tz).astimezone(timezone.utc)


def is_known_timezone(tz_name: str) -> bool:
    try:
        ZoneInfo(tz_name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True
