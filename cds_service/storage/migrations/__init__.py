"""Alembic migrations of the audit and feedback database, shipped inside the package."""
