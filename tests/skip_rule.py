"""A skip fails unless the test says why it may be skipped, with
`@pytest.mark.may_skip("why")`: a skip nobody meant hides a test that no
longer runs. A module that skips itself whole at collection fails too (no
marker can speak for it): skip inside its tests, marked. Loaded by
tests/conftest.py; tests/test_skip_rule.py shows it at work."""

from __future__ import annotations

import pytest

MAY_SKIP = "may_skip"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", f"{MAY_SKIP}(reason): this test may be skipped, and why; any other skip fails")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if report.skipped and not hasattr(report, "wasxfail"):
        marker = item.get_closest_marker(MAY_SKIP)
        if marker is None or not (marker.args and str(marker.args[0]).strip()):
            _fail_the_skip(report, f'{item.nodeid} has no @pytest.mark.{MAY_SKIP}("why")')
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector: pytest.Collector) -> pytest.CollectReport:
    report = yield
    if report.skipped:
        _fail_the_skip(report, f"{collector.nodeid} skipped itself at collection, where no {MAY_SKIP} marker can say why")
    return report


def _fail_the_skip(report: pytest.TestReport | pytest.CollectReport, problem: str) -> None:
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"a skip nobody said may happen: {problem} (skipped because: {reason})"
