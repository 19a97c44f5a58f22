"""Test environment helpers: skip or fail by CI, and where artefacts go."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def in_ci() -> bool:
    """Tell whether we run in CI, where a missing tool must fail rather than skip."""
    return os.environ.get("CI", "").lower() == "true"


def skip_or_fail(reason: str) -> None:
    """Skip with a visible reason on a developer machine; fail in CI."""
    if in_ci():
        pytest.fail(f"{reason} (CI=true: failing instead of skipping)")
    pytest.skip(reason)


def artifacts_dir() -> Path:
    """Return tests/artifacts/, created with a .gitignore so what tests leave there stays local."""
    directory = Path(__file__).resolve().parents[1] / "artifacts"
    directory.mkdir(exist_ok=True)
    ignore = directory / ".gitignore"
    if not ignore.exists():
        ignore.write_text(
            "# Screenshots and other test artefacts: kept locally and by CI, not committed.\n*\n"
        )
    return directory
