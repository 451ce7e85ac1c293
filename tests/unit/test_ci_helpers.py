"""tests/ci.py: a missing tool skips a test locally and fails it in CI."""

from __future__ import annotations

import pytest
from ci import missing


@pytest.mark.parametrize("value", ["true", "1", "TRUE"])
def test_a_missing_tool_fails_the_test_in_ci(monkeypatch, value):
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="no chromium; CI=true: CI must have it"):
        missing("no chromium")


@pytest.mark.parametrize("value", [None, "", "false"])
def test_a_missing_tool_skips_the_test_elsewhere(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="no chromium"):
        missing("no chromium")
