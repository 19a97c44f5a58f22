"""Alembic environment: run migrations on the connection Storage hands over.

``Storage.migrate()`` passes an open connection (already inside a transaction that holds
the migration lock) in ``config.attributes["connection"]``. Run by the alembic command line
(for ``alembic revision --autogenerate``), it connects to ``CDS_DATABASE_URL`` instead.
"""

from __future__ import annotations

import os

from alembic import context
from sqlalchemy import Connection

from cds_service.storage.schema import metadata

config = context.config


def run_on(connection: Connection) -> None:
    """Configure Alembic on ``connection`` and run the pending migrations."""
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode recreates the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    """Migrate the handed-over connection, or the database named by CDS_DATABASE_URL."""
    if context.is_offline_mode():
        raise SystemExit("offline (--sql) migrations are not supported; run against a database")
    connection = config.attributes.get("connection")
    if connection is not None:
        run_on(connection)
        return
    url = os.environ.get("CDS_DATABASE_URL") or config.get_main_option("sqlalchemy.url")
    if not url:
        raise SystemExit("set CDS_DATABASE_URL to the database to migrate")
    from cds_service.storage.store import Storage  # engine settings (WAL, psycopg) shared

    storage = Storage(url)
    try:
        with storage.engine.connect() as conn:
            run_on(conn)
            conn.commit()
    finally:
        storage.dispose()


main()
