"""The span a report covers, and the one before it to compare with."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone


@dataclass(frozen=True)
class Period:
    start: datetime
    end: datetime  # exclusive

    @classmethod
    def ending(cls, until: datetime | None = None, days: int = 7) -> Period:
        """The `days` days before `until` (default: now)."""
        if days < 1:
            raise ValueError(f"a report covers at least one day, not {days}")
        until = until or datetime.now(timezone.utc)
        if until.tzinfo is None:
            raise ValueError("until needs a time zone (e.g. 2026-03-02T00:00+00:00)")
        return cls(start=until - timedelta(days=days), end=until)

    @property
    def previous(self) -> Period:
        return Period(start=self.start - (self.end - self.start), end=self.start)

    @property
    def label(self) -> str:
        last = self.end - timedelta(microseconds=1)
        return f"{self.start:%Y-%m-%d %H:%M} to {last:%Y-%m-%d %H:%M}"
