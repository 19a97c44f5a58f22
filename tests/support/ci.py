"""Skip where a developer lacks a tool; fail in CI, where nothing may be silently skipped."""

from __future__ import annotations

import os

import pytest


def in_ci() -> bool:
    """Tell whether we run in CI, where a missing tool must fail rather than skip."""
    return os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> None:
    """Skip with a visible reason on a developer machine; fail in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: failing instead of skipping)")
    pytest.skip(reason)
