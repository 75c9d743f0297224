"""Tests that run for tens of seconds say so, `@pytest.mark.long(seconds)`
(about that long on two busy cores), and start first, longest first, each
followed by a short test: under pytest-xdist each long test then starts at
once on a worker of its own while the short ones fill the others, instead of
one starting last (or queued behind another) and the run waiting for it.

Why followed by a short one: an xdist worker holds one test besides the one
it runs, and is sent the next only when a test ends. So a worker that just
took a long test holds a short one, and a long test given out later waits
behind a short test, never behind a long one. That needs the tests sent one
at a time (`--maxschedchunk 1`, set here); xdist would otherwise send a
worker a run of consecutive tests: all the long ones together.
Loaded by tests/conftest.py."""

from __future__ import annotations

import pytest

LONG = "long"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{LONG}(seconds): runs about that long; started first, longest first")
    if hasattr(config.option, "maxschedchunk") and config.option.maxschedchunk is None:
        config.option.maxschedchunk = 1


def expected_seconds(item: pytest.Item) -> float:
    marker = item.get_closest_marker(LONG)
    return marker.args[0] if marker else 0.0


def spread(long: list[pytest.Item]) -> list[pytest.Item]:
    """Longest first, but where it can, not two cases of one test function
    (the drills) one after the other: they would start together and, on two
    cores, contend the most."""
    left, ordered = sorted(long, key=expected_seconds, reverse=True), []
    while left:
        last = ordered[-1].originalname if ordered else None
        pick = next((item for item in left if item.originalname != last), left[0])
        left.remove(pick)
        ordered.append(pick)
    return ordered


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every xdist worker orders the same collection the same way, as xdist
    # requires; the short tests keep their order.
    long = spread([item for item in items if expected_seconds(item)])
    short = [item for item in items if not expected_seconds(item)]
    paired = [test for pair in zip(long, short) for test in pair]
    items[:] = paired + long[len(short):] + short[len(long):]
