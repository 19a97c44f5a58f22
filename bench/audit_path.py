"""``python -m bench.audit_path``: what the durable audit write costs the hook path (issue 13).

Since issue 13 every hook call writes its audit record before the answer leaves (the database
within ``CDS_AUDIT_WRITE_TIMEOUT_MS``, else an fsync'd spool line), instead of putting it on an
in-memory queue. This measures, in one process and at concurrency 1 (the write's latency is
what a caller waits for; CPU is in the other tables):

- ``AuditWriter.submit`` alone, for the typical body's record, on SQLite (the default file),
  on PostgreSQL (local server), and with the database away (the spool: one fsync'd line);
- a whole order-sign call (typical body, Flask test client) with the audit write as shipped
  and with it replaced by nothing, the difference being the hook path's cost of the design.

Prints a Markdown table; bench/RESULTS.md keeps the last run under "Audit write on the hook
path". Needs the local PostgreSQL (``CDS_TEST_POSTGRES_URL`` or 127.0.0.1:5432 db ``test``).
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import psycopg
from flask import Flask

from bench.payloads import prefetch_request
from cds_service import close_app, create_app
from cds_service.storage import AuditWriter, get_audit_writer
from tests.support.ci import find_postgres, postgres_candidates

CALLS = 300
TODAY = date(2026, 11, 23)


def percentiles(samples: list[float]) -> tuple[float, float]:
    """p50 and p99 in milliseconds."""
    ordered = sorted(samples)
    return statistics.median(ordered) * 1000, ordered[int(len(ordered) * 0.99) - 1] * 1000


@contextmanager
def app_on(database_url: str, spool: Path) -> Iterator[Flask]:
    """The service on ``database_url`` with its spool in ``spool``."""
    app = create_app(
        {
            "CDS_DATABASE_URL": database_url,
            "CDS_AUDIT_HASH_KEY": "bench",
            "CDS_AUDIT_SPOOL_DIR": str(spool),
            "CDS_CLOCK": lambda: datetime(2026, 11, 23, 12, tzinfo=UTC),
            "CDS_REPEAT_WINDOW_DAYS": 0,  # no override read: the write alone is measured
        }
    )
    try:
        yield app
    finally:
        close_app(app)


def hook_calls(app: Flask, body: dict[str, Any], calls: int) -> tuple[list[float], list[float]]:
    """Time whole calls and, inside them, the audit submit; return both sample lists."""
    client = app.test_client()
    writer: AuditWriter = get_audit_writer(app)
    submit = writer.submit
    inside: list[float] = []

    def timed_submit(record: Any) -> None:
        started = time.perf_counter()
        submit(record)
        inside.append(time.perf_counter() - started)

    writer.submit = timed_submit  # type: ignore[method-assign]
    whole: list[float] = []
    for _ in range(20):  # warm-up: pools, caches, the first connection
        client.post("/cds-services/voclosporin-order-sign", json=body)
    inside.clear()
    for _ in range(calls):
        body["hookInstance"] = str(uuid.uuid4())
        started = time.perf_counter()
        response = client.post("/cds-services/voclosporin-order-sign", json=body)
        whole.append(time.perf_counter() - started)
        assert response.status_code == 200
    writer.submit = submit  # type: ignore[method-assign]
    return whole, inside


def no_write(app: Flask) -> None:
    """Replace the audit write with nothing (the floor the old in-memory queue came close to)."""
    get_audit_writer(app).submit = lambda record: None  # type: ignore[method-assign]


def postgres_schema() -> tuple[str, Callable[[], None]]:
    """A new schema on the local PostgreSQL and a function that drops it."""
    found = find_postgres(postgres_candidates())
    if isinstance(found, str):
        raise SystemExit(found)
    schema = f"cds_bench_{uuid.uuid4().hex[:10]}"
    admin = found.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')

    def drop() -> None:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')

    url = found.update_query_dict({"options": f"-csearch_path={schema}"})
    return url.render_as_string(hide_password=False), drop


def bare_commits(conninfo: str, calls: int) -> tuple[float, float]:
    """p50/p99 of one-row INSERT + COMMIT on the same server: what the server's commit costs
    now, whatever the service does (a busy shared machine shows here first)."""
    samples = []
    with psycopg.connect(conninfo) as conn:
        conn.execute("CREATE TEMP TABLE bench_commit (id text)")
        conn.commit()
        for _ in range(calls):
            started = time.perf_counter()
            conn.execute("INSERT INTO bench_commit VALUES (%s)", (str(uuid.uuid4()),))
            conn.commit()
            samples.append(time.perf_counter() - started)
    return percentiles(samples)


def main() -> int:
    """Run the cases and print the table."""
    body = prefetch_request(100, TODAY)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch)
        pg_url, drop = postgres_schema()
        cases: list[tuple[str, str, Callable[[Flask], None] | None]] = [
            ("no audit write (floor)", f"sqlite:///{root / 'floor.sqlite3'}", no_write),
            ("SQLite file (default)", f"sqlite:///{root / 'audit.sqlite3'}", None),
            ("PostgreSQL, local", pg_url, None),
            ("database away: spool (fsync)", "postgresql+psycopg://postgres@127.0.0.1:1/x", None),
        ]
        try:
            for label, url, prepare in cases:
                with app_on(url, root / f"spool-{len(rows)}") as app:
                    if prepare is not None:
                        prepare(app)
                    if "spool" in label:
                        # as if the database had answered at start-up, then went away
                        get_audit_writer(app).storage._migrator._prepared = True
                    whole, inside = hook_calls(app, body, CALLS)
                    rows.append(
                        (
                            label,
                            *percentiles(whole),
                            *(percentiles(inside) if inside else (0.0, 0.0)),
                        )
                    )
            bare = bare_commits(pg_url.replace("postgresql+psycopg://", "postgresql://"), CALLS)
        finally:
            drop()
    floor = rows[0][1]
    print(f"{CALLS} order-sign calls (typical body: 100 Observations + 100 MedicationRequests), ")
    print("concurrency 1, Flask test client in one process; milliseconds.\n")
    print("| audit write | call p50 | call p99 | call p50 minus floor | submit p50 | submit p99 |")
    print("|---|---|---|---|---|---|")
    for label, p50, p99, s50, s99 in rows:
        print(f"| {label} | {p50:.2f} | {p99:.2f} | {p50 - floor:+.2f} | {s50:.2f} | {s99:.2f} |")
    print(
        f"\nBare PostgreSQL one-row INSERT + COMMIT, same server, same run: p50 {bare[0]:.2f} ms, "
    )
    print(f"p99 {bare[1]:.2f} ms. Load average at end: {' '.join(map(str, os.getloadavg()))}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
