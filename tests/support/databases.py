"""Real databases for the storage tests: a SQLite file and the local PostgreSQL server.

Each PostgreSQL test gets its own schema (dropped afterwards), so parallel runs and
leftovers never clash. Where no PostgreSQL server answers, its tests skip with the reason;
in CI (``CI=true``) they fail instead. ``CDS_TEST_POSTGRES_URL`` overrides the server.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from flask import Flask
from sqlalchemy.engine import URL

from cds_service.storage import Storage, shutdown_storage
from tests.support.ci import find_postgres, postgres_candidates, skip_or_fail
from tests.support.factories import make_app, sqlite_url


@pytest.fixture(scope="session")
def postgres_server() -> URL:
    """Find the PostgreSQL test server and a role that may log in (postgres or root)."""
    found = find_postgres(postgres_candidates())
    if isinstance(found, str):
        skip_or_fail(found)
        raise AssertionError("unreachable")  # skip_or_fail always raises
    return found


@pytest.fixture
def postgres_url(postgres_server: URL) -> Iterator[str]:
    """Yield a URL whose search_path is a new empty schema, dropped after the test."""
    schema = f"cds_test_{uuid.uuid4().hex[:12]}"
    conninfo = postgres_server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(conninfo, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    try:
        yield postgres_server.update_query_dict(
            {"options": f"-csearch_path={schema}"}
        ).render_as_string(hide_password=False)
    finally:
        with psycopg.connect(conninfo, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Yield an empty database URL, once for SQLite and once for PostgreSQL."""
    if request.param == "sqlite":
        return sqlite_url(tmp_path)
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def empty_storage(database_url: str) -> Iterator[Storage]:
    """Yield a Storage on an empty database (not migrated)."""
    storage = Storage(database_url)
    try:
        yield storage
    finally:
        storage.dispose()


@pytest.fixture
def storage(empty_storage: Storage) -> Storage:
    """Return a Storage whose database is migrated to head."""
    empty_storage.migrate()
    return empty_storage


@pytest.fixture
def storage_app(tmp_path: Path) -> Iterator[Flask]:
    """Yield an app on a fresh SQLite database in its instance folder."""
    app = make_app(tmp_path / "instance")
    try:
        yield app
    finally:
        shutdown_storage(app)
