"""Shared fixtures: the app on a throwaway SQLite file, its test client, the knowledge base."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from cds_service import close_app, create_app
from fhir_mappings.codes import Terminology
from fhir_mappings.knowledge import Knowledge, load_knowledge
from tests.support.fhir_server import fhir_server  # noqa: F401  (session fixture)

# A fixed "now" so scenario files with absolute dates give the same answer every day.
FIXED_NOW = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def make_app(tmp_path: Path, **overrides: object) -> Flask:
    config: dict[str, object] = {
        "TESTING": True,
        "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'cds-test.sqlite3'}",
        "CDS_AUDIT_HASH_KEY": "test-key",
        "CDS_AUDIT_SPOOL_DIR": str(tmp_path / "audit-spool"),
        "CDS_CLOCK": lambda: FIXED_NOW,
    }
    config.update(overrides)
    return create_app(config)


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    application = make_app(tmp_path)
    yield application
    close_app(application)


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture(scope="session")
def knowledge() -> Knowledge:
    return load_knowledge()


@pytest.fixture(scope="session")
def terminology(knowledge: Knowledge) -> Terminology:
    return Terminology(knowledge)
