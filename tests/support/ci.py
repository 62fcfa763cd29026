"""What a test does when something it needs is missing: locally it skips, saying what is
missing; under CI (the CI environment variable set, as .ci/run sets it) it fails, because
.ci/run installs everything the suite needs and a quiet skip there would hide a lost test."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["IN_CI", "missing"]

IN_CI = os.environ.get("CI", "").lower() not in ("", "0", "false", "no")


def missing(reason: str) -> NoReturn:
    """Skip the test for `reason`, or under CI fail it."""
    if IN_CI:
        pytest.fail(f"{reason} (CI is set: .ci/run should have provided it)", pytrace=False)
    pytest.skip(reason)
