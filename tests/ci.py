"""What a test does when a tool it needs is missing: locally it skips and says why; under CI (``CI=true``,
which .ci/run sets) it fails, so a CI machine without the tool cannot pass by skipping the test."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def missing(reason: str) -> None:
    """Skip (locally) or fail (in CI) the running test, with ``reason``."""
    if in_ci():
        pytest.fail(f"{reason}; CI=true: CI must have it", pytrace=False)
    pytest.skip(reason)
