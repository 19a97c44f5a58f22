"""Test environment helpers: skip or fail by CI, the PostgreSQL server, where artefacts go."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import psycopg
import pytest
from sqlalchemy.engine import URL, make_url

POSTGRES_ROLES = ("postgres", "root")


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


def find_postgres(candidates: Sequence[URL]) -> URL | str:
    """Return the first candidate that accepts a connection, or why none does."""
    errors = []
    for url in candidates:
        conninfo = url.set(drivername="postgresql").render_as_string(hide_password=False)
        try:
            with psycopg.connect(conninfo, connect_timeout=3):
                return url
        except psycopg.OperationalError as exc:
            errors.append(
                f"{url.username}@{url.host}:{url.port}: {str(exc).strip().splitlines()[0]}"
            )
    return "no PostgreSQL server answers (" + "; ".join(errors) + ")"


def postgres_candidates() -> list[URL]:
    """Return CDS_TEST_POSTGRES_URL, or the local test database as postgres, then root."""
    if override := os.environ.get("CDS_TEST_POSTGRES_URL"):
        return [make_url(override).set(drivername="postgresql+psycopg")]
    return [
        URL.create(
            "postgresql+psycopg", username=role, host="127.0.0.1", port=5432, database="test"
        )
        for role in POSTGRES_ROLES
    ]
