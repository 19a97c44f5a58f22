"""Create storage for a Flask app: config, start-up migration, audit writer, the ``db`` CLI.

Config keys (set by create_app from ``CDS_*`` environment variables):

``CDS_DATABASE_URL``
    SQLAlchemy URL of the audit and feedback database. Default (None or empty): the SQLite
    file ``cds.sqlite3`` in the app's instance folder. ``postgresql://user@host/db`` means
    psycopg 3 (``postgresql+psycopg://``); use PostgreSQL when several instances run.
``CDS_AUDIT_HASH_KEY``
    Secret key (str or bytes) for the HMAC-SHA256 of patient ids in the audit trail. Unset:
    a random key per process, so hashes stay unlinkable to ids but do not link one
    patient's calls across restarts or instances; set it in production.

``CDS_DB_STATEMENT_TIMEOUT_MS`` / ``CDS_DB_LOCK_TIMEOUT_MS``
    Bounds of every database use (``DatabaseTimeouts``).
``CDS_AUDIT_WRITE_TIMEOUT_MS``, ``CDS_AUDIT_SPOOL_MAX_MB``, ``CDS_AUDIT_DRAIN_SECONDS``
    The hook path's audit write bound, the spool's size bound, the replay wait at shutdown
    (``AuditWriter``).
``CDS_AUDIT_SPOOL_DIR``
    The spool's folder; default ``<instance folder>/audit-spool``.

At start-up an *empty* database gets the schema; a database that already has data is only
upgraded by ``flask --app cds_service db upgrade``, so one instance never changes a schema
under others still running. A database that cannot be reached at start-up is logged and
the service starts anyway: cards must go out; the writer retries the schema check later.
"""

from __future__ import annotations

import atexit
import logging
import os
import secrets
import weakref

import click
from flask import Flask, current_app
from flask.cli import AppGroup

from cds_service.errors import StorageUnavailableError

from .audit import AuditWriter
from .engine import DatabaseTimeouts
from .spool import AuditSpool
from .store import Storage

log = logging.getLogger(__name__)

STORAGE_EXTENSION = "cds_storage"
WRITER_EXTENSION = "cds_audit_writer"
HASH_KEY_EXTENSION = "cds_audit_hash_key"

db_cli = AppGroup("db", help="Manage the audit and feedback database.")


@db_cli.command("upgrade")
def upgrade_command() -> None:
    """Upgrade the database to the newest migration shipped with this code.

    Without CDS_DATABASE_URL the target would be the instance folder's SQLite file, which
    is development's database, never a shared one: refused unless the app runs in debug
    mode (``FLASK_DEBUG=1``), and then the file is named.
    """
    storage = get_storage()
    if not current_app.config.get("CDS_DATABASE_URL"):
        if not current_app.debug:
            raise click.ClickException(
                f"CDS_DATABASE_URL is not set: refusing to migrate the instance folder's "
                f"SQLite file {storage.url.database} (a rollout migrates the shared database: "
                "set CDS_DATABASE_URL; for the development file set FLASK_DEBUG=1)"
            )
        click.echo(f"CDS_DATABASE_URL is not set: migrating the development file {storage!r}")
    storage.migrate()
    click.echo(f"{storage!r} is at migration {storage.current_revision()}")


@db_cli.command("replay-spool")
@click.option("--timeout", default=60.0, show_default=True, help="Seconds to keep trying.")
def replay_spool_command(timeout: float) -> None:
    """Write the audit spool of this instance folder to the database (a retired instance)."""
    writer = get_audit_writer()
    spool = writer.spool
    assert spool is not None
    waiting = spool.pending()
    done = writer.flush(timeout)
    left = spool.pending()
    click.echo(f"{spool}: {waiting - left} record(s) written, {left} still waiting")
    if not done:
        raise click.ClickException(f"{left} record(s) stay in {spool.directory}")


@db_cli.command("current")
def current_command() -> None:
    """Show the database's migration and the newest one this code ships."""
    storage = get_storage()
    click.echo(f"{storage!r}: at {storage.current_revision()}, newest {storage.head_revision()}")


def get_storage(app: Flask | None = None) -> Storage:
    """Return the app's Storage (init_storage must have run)."""
    storage = (app or current_app).extensions[STORAGE_EXTENSION]
    assert isinstance(storage, Storage)
    return storage


def get_audit_writer(app: Flask | None = None) -> AuditWriter:
    """Return the app's AuditWriter (init_storage must have run)."""
    writer = (app or current_app).extensions[WRITER_EXTENSION]
    assert isinstance(writer, AuditWriter)
    return writer


def default_database_url(app: Flask) -> str:
    """Return the SQLite file in the instance folder, creating the folder."""
    os.makedirs(app.instance_path, exist_ok=True)
    return "sqlite:///" + os.path.join(app.instance_path, "cds.sqlite3")


def _hash_key(app: Flask) -> bytes:
    """Return the patient-hash key from config, or a random one with a warning."""
    key = app.config.get("CDS_AUDIT_HASH_KEY")
    if isinstance(key, bytes) and key:
        return key
    if isinstance(key, str) and key:
        return key.encode("utf-8")
    log.warning(
        "CDS_AUDIT_HASH_KEY is not set: patient hashes use a random per-process key "
        "and will not link one patient's calls across restarts or instances"
    )
    return secrets.token_bytes(32)


def _close_at_exit(writer_ref: weakref.ReferenceType[AuditWriter]) -> None:
    """Write what is still queued when the process exits."""
    writer = writer_ref()
    if writer is not None:
        writer.close()


def init_storage(app: Flask) -> tuple[Storage, AuditWriter, bytes]:
    """Create Storage (on the app's ``CDS_CLOCK``) and AuditWriter; migrate an empty database.

    Returns them with the patient-hash key; ``cds_service.app`` registers the ``db`` CLI.
    """
    config = app.config
    storage = Storage(
        config.get("CDS_DATABASE_URL") or default_database_url(app),
        clock=config["CDS_CLOCK"],
        timeouts=DatabaseTimeouts(
            statement_ms=int(config.get("CDS_DB_STATEMENT_TIMEOUT_MS", 5000)),
            lock_ms=int(config.get("CDS_DB_LOCK_TIMEOUT_MS", 2000)),
        ),
    )
    try:
        storage.prepare()
    except StorageUnavailableError as exc:
        log.error("audit database unavailable at start-up; serving cards without it: %s", exc)
    spool = AuditSpool(
        config.get("CDS_AUDIT_SPOOL_DIR") or os.path.join(app.instance_path, "audit-spool"),
        max_bytes=int(float(config.get("CDS_AUDIT_SPOOL_MAX_MB", 256)) * 1024 * 1024),
        database_key=storage.url.render_as_string(hide_password=True),
    )
    writer = AuditWriter(
        storage,
        spool,
        write_timeout_ms=int(config.get("CDS_AUDIT_WRITE_TIMEOUT_MS", 500)),
        drain_s=float(config.get("CDS_AUDIT_DRAIN_SECONDS", 10)),
    )
    if spool.segments():
        log.warning("audit spool %s holds records from an earlier run: replaying", spool)
    atexit.register(_close_at_exit, weakref.ref(writer))
    app.extensions[STORAGE_EXTENSION] = storage
    app.extensions[WRITER_EXTENSION] = writer
    app.extensions[HASH_KEY_EXTENSION] = hash_key = _hash_key(app)
    return storage, writer, hash_key


def shutdown_storage(app: Flask, timeout: float | None = None) -> None:
    """Replay spooled audit records (at most ``timeout``, default ``CDS_AUDIT_DRAIN_SECONDS``),
    stop the writer and close connections (tests, shutdown)."""
    get_audit_writer(app).close(timeout)
    get_storage(app).dispose()
