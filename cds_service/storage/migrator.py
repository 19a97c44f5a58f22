"""Run the Alembic migrations shipped in ``cds_service/storage/migrations`` on one database.

``migrate()`` holds a lock while it upgrades (a transaction-level advisory lock on
PostgreSQL, the write lock on SQLite), so instances starting together migrate once.
``prepare()`` migrates only an *empty* database; a used one is upgraded by the documented
command, so a deploy never changes a shared schema behind other running instances' backs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, func, inspect, select

from .engine import Database
from .schema import TABLES

log = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant works; it only has to be the same in every instance of this service.
_PG_MIGRATION_LOCK = 0x6364_7356_6F63  # "cdsVoc"
_MIGRATION_LOCK_WAIT_MS = 60_000


class Migrator:
    """Bring one database to this code's schema; ``label`` names it in log lines."""

    def __init__(self, database: Database, label: str) -> None:
        self.database = database
        self.label = label
        self._prepared = False

    def _alembic_config(self, conn: Connection | None = None) -> Config:
        """Build the Alembic config for the migrations shipped inside this package."""
        config = Config()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.set_main_option(
            "sqlalchemy.url",
            self.database.url.render_as_string(hide_password=False).replace("%", "%%"),
        )
        config.attributes["connection"] = conn
        return config

    def head_revision(self) -> str | None:
        """Return the newest migration shipped with this code."""
        return ScriptDirectory.from_config(self._alembic_config()).get_current_head()

    def current_revision(self) -> str | None:
        """Return the migration the database is at (None when never migrated)."""
        with self.database.transaction(write=False) as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def is_empty(self) -> bool:
        """Tell whether the database has neither our tables nor a migration record."""
        with self.database.transaction(write=False) as conn:
            names = set(inspect(conn).get_table_names())
        return not names & ({table.name for table in TABLES} | {"alembic_version"})

    def migrate(self) -> None:
        """Upgrade the database to the newest migration, under the migration lock."""
        with self.database.transaction(write=True) as conn:
            if conn.dialect.name == "postgresql":
                # A migration may rewrite a large table and wait for another instance's: the
                # connection's statement timeout would cut it off; a minute for locks stays.
                conn.exec_driver_sql("SET LOCAL statement_timeout = 0")
                conn.exec_driver_sql(f"SET LOCAL lock_timeout = {_MIGRATION_LOCK_WAIT_MS}")
                conn.execute(select(func.pg_advisory_xact_lock(_PG_MIGRATION_LOCK)))
            command.upgrade(self._alembic_config(conn), "head")
        self._prepared = True
        log.info("database %s migrated to %s", self.label, self.head_revision())

    @property
    def prepared(self) -> bool:
        """Tell whether ``prepare`` has succeeded once."""
        return self._prepared

    def prepare(self) -> None:
        """Migrate an empty database; warn when a used one is behind this code's schema."""
        if self._prepared:
            return
        if self.is_empty():
            log.info("database %s is empty: creating the schema", self.label)
            self.migrate()
            self._prepared = True
            return
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            log.warning(
                "database %s is at migration %s but this code expects %s: run "
                "'flask --app cds_service db upgrade'",
                self.label,
                current,
                head,
            )
        self._prepared = True
