"""One module per migration; Alembic reads them by file, this file only makes them a package."""
