"""Define the hooks this checker knows: each hook's context table, and the deprecated ones.

The tables follow the HL7 cds-hooks-library 1.0.1; add a hook here and both the request
checks (its context) and the discovery checks (its prefetch tokens) know it.
"""

from __future__ import annotations

from collections.abc import Mapping

from .core import Field

DEPRECATED_HOOKS: Mapping[str, str] = {"medication-prescribe": "order-select and order-sign"}

_USER_ID = Field("string", required=True, prefetch_token=True)
_PATIENT_ID = Field("string", required=True, prefetch_token=True)
_ENCOUNTER_ID = Field("string", prefetch_token=True)
# Context tables of the hooks this checker knows (HL7 cds-hooks-library 1.0.1).
HOOK_CONTEXTS: Mapping[str, Mapping[str, Field]] = {
    "patient-view": {
        "userId": _USER_ID,
        "patientId": _PATIENT_ID,
        "encounterId": _ENCOUNTER_ID,
    },
    "order-select": {
        "userId": _USER_ID,
        "patientId": _PATIENT_ID,
        "encounterId": _ENCOUNTER_ID,
        "selections": Field("array", required=True),
        "draftOrders": Field("Bundle", required=True),
    },
    "order-sign": {
        "userId": _USER_ID,
        "patientId": _PATIENT_ID,
        "encounterId": _ENCOUNTER_ID,
        "draftOrders": Field("Bundle", required=True),
    },
    "medication-prescribe": {
        "userId": _USER_ID,
        "patientId": _PATIENT_ID,
        "encounterId": _ENCOUNTER_ID,
        "medications": Field("Bundle", required=True),
    },
}
