"""Voclosporin (LUPKYNIS) CDS Hooks 2.0 service.

The app factory lives in ``cds_service.app``; it is re-exported here, lazily, so that
``flask --app cds_service`` and ``gunicorn 'cds_service:create_app()'`` keep working while
importing the clinical core (``cds_service.rules``, ``fhir_mappings``) loads no Flask.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cds_service.app import close_app, create_app

__all__ = ["close_app", "create_app"]


def __getattr__(name: str) -> Any:
    """Import the app factory on first use (PEP 562), not when a rule is imported."""
    if name in __all__:
        from cds_service import app

        return getattr(app, name)
    raise AttributeError(f"module 'cds_service' has no attribute {name!r}")
