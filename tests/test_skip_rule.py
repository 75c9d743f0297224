"""tests/skip_rule.py: a skip fails unless the test says why it may be skipped."""

from __future__ import annotations

import pytest


def test_an_unmarked_skip_fails_and_a_marked_one_is_a_skip(pytester: pytest.Pytester):
    pytester.makepyfile(
        test_sample='''
        import pytest

        def test_unmarked():
            pytest.skip("no reason given")

        @pytest.mark.skipif(True, reason="a condition")
        def test_unmarked_skipif():
            pass

        @pytest.mark.may_skip("")
        def test_marked_without_a_reason():
            pytest.skip("an empty why")

        @pytest.mark.may_skip("the tool it needs is optional")
        def test_marked():
            pytest.skip("the tool is not installed")

        @pytest.mark.xfail(reason="a known bug")
        def test_expected_failure():
            assert False

        def test_runs():
            pass
        '''
    )
    result = pytester.runpytest("-p", "tests.skip_rule", "-p", "no:asyncio")
    # A skipif skips at setup: its failure is reported as an error there.
    result.assert_outcomes(passed=1, skipped=1, failed=2, errors=1, xfailed=1)
    result.stdout.fnmatch_lines(["*test_unmarked has no @pytest.mark.may_skip*no reason given*"])


def test_a_module_that_skips_itself_at_collection_fails(pytester: pytest.Pytester):
    pytester.makepyfile(
        test_whole_module='''
        import pytest

        pytest.skip("nothing here today", allow_module_level=True)

        def test_never_collected():
            pass
        '''
    )
    result = pytester.runpytest("-p", "tests.skip_rule", "-p", "no:asyncio")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*skipped itself at collection*nothing here today*"])
