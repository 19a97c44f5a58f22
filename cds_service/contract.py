"""The wire contract's constants, each defined once: the standard's limits and our own names.

The numbers CDS Hooks 2.0 and FHIR R4 fix live in the stdlib-only checker
(``cds_service.spec_check.core``), which integrators may copy; this module re-exports them
and adds what this service decides. ``openapi.yaml`` states the same values and
``tests/test_openapi.py`` holds it to this module.
"""

from __future__ import annotations

import re

from cds_service.spec_check.core import (
    FHIR_ID,
    FHIR_ID_MAX_LENGTH,
    SUMMARY_MAX_LENGTH,
    USER_REFERENCE_TYPES,
)

__all__ = [
    "ACCEPTED_FHIR_ID",
    "ACCEPTED_ID_MAX_LENGTH",
    "ACCEPTED_USER_REFERENCE",
    "FHIR_ID",
    "FHIR_ID_MAX_LENGTH",
    "ORDERS_SERVICE_HOOKS",
    "ORDERS_SERVICE_ID",
    "RULE_TOPIC_SYSTEM",
    "SERVICE_ID_PREFIX",
    "SUMMARY_MAX_LENGTH",
]

# What the service accepts in a hook request: R4 caps an id at 64 characters; twice that is
# accepted so an EHR that overshoots is still checked rather than refused. The alphabet is R4's
# (ids go into FHIR URLs). The CLI and the checker hold documents to R4 itself (``FHIR_ID``).
ACCEPTED_ID_MAX_LENGTH = 2 * FHIR_ID_MAX_LENGTH
_ACCEPTED_ID = rf"[A-Za-z0-9\-.]{{1,{ACCEPTED_ID_MAX_LENGTH}}}"
ACCEPTED_FHIR_ID = re.compile(rf"^{_ACCEPTED_ID}\Z")
ACCEPTED_USER_REFERENCE = re.compile(rf"^({'|'.join(USER_REFERENCE_TYPES)})/{_ACCEPTED_ID}\Z")

# card.source.topic.system: the code system whose codes are this service's rule ids.
RULE_TOPIC_SYSTEM = "urn:voclosporin-cds:rule"
# One id for the order-select and order-sign entries of discovery (#update-stale-guidance: "CDS
# Services indicate this intent by providing multiple CDS Services with the same id"), so a
# client replaces the order-select cards with the order-sign cards instead of showing both.
ORDERS_SERVICE_ID = "voclosporin-orders"
ORDERS_SERVICE_HOOKS = ("order-select", "order-sign")
# Every other id is this prefix and the hook name: ``voclosporin-medication-prescribe`` in
# discovery, and the per-hook ``voclosporin-order-select`` / ``voclosporin-order-sign``, which
# answer (sites registered them) but discovery no longer lists.
SERVICE_ID_PREFIX = "voclosporin-"
