"""Assemble the patient's chart from prefetch, fetching from the EHR's FHIR server what is missing.

Per prefetch key (CDS Hooks 2.0 #prefetch, knowledge A.5):
- a resource or Bundle: use it (and follow its ``next`` link when the server may be used);
- ``null``: the EHR has no data for it (a clinical fact, not an error);
- absent, or an OperationOutcome: fetch it; when the FHIR server cannot be used, the call
  answers 412 (spec #http-status-codes);
- a fetch that fails (timeout, 5xx, 401 ...) leaves the category *unavailable*, which the rules
  report on the data-unavailable card.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cds_service.contract import ACCEPTED_FHIR_ID
from cds_service.errors import FhirFetchError, FhirServerNotAllowed, PreconditionFailed
from cds_service.fhir_client import FhirClient, HostLimits, run_concurrently
from cds_service.fhir_policy import FhirServerPolicy
from fhir_mappings.bundles import (
    BundleContents,
    is_bundle,
    next_link,
    of_expected_types,
    outcome_issue_codes,
    prefetch_failure,
    read_bundle,
)
from fhir_mappings.categories import (
    CATEGORIES,
    MEDICATION_CATEGORIES,
    PATIENT_TOKEN,
    REQUIRED_KEYS,
    category_of_key,
    prefetch_key,
)
from fhir_mappings.facts import Unreadable
from fhir_mappings.readers import is_resource_of
from fhir_mappings.references import missing_medications
from fhir_mappings.vocabulary import DataCategory as D

if TYPE_CHECKING:  # the session is made in app.py; only fhir_client.py calls it
    import requests

log = logging.getLogger(__name__)

Resource = dict[str, Any]
# A Patient read that answers 404 and a prefetched ``null`` patient are the same fact (spec
# #prefetch-template: prefetch must equal what the service would fetch), so both leave the
# patient unavailable; the rules that need age or sex then say they could not run.
PATIENT_NOT_FOUND = "patient not found on the FHIR server (404)"


@dataclass(frozen=True)
class FhirAccess:
    """How this call may reach the EHR's FHIR server (None server: prefetch only)."""

    server: str | None
    token: str | None
    refusal: str | None = None


@dataclass
class Chart:
    patient: Resource | None = None
    resources: dict[D, list[Resource]] = field(default_factory=dict)
    unavailable: dict[D, str] = field(default_factory=dict)
    # Keys the EHR neither sent nor let the service fetch, for data it may not hold at all
    # (``CategorySpec.absent_if_not_offered``): read as none.
    not_offered: list[str] = field(default_factory=list)
    unreadable: list[Unreadable] = field(default_factory=list)
    fetched: list[str] = field(default_factory=list)
    fetch_failed: list[str] = field(default_factory=list)  # prefetch keys whose query failed


@dataclass(frozen=True)
class ChartSettings:
    policy: FhirServerPolicy
    session: requests.Session
    executor: Executor
    allow_unauthenticated: bool
    max_pages: int = 20
    host_limits: HostLimits = field(default_factory=lambda: HostLimits(8))


def decide_access(
    fhir_server: str | None, token: str | None, settings: ChartSettings
) -> FhirAccess:
    """May we query ``fhir_server``? Spec: only with fhirAuthorization (dev flag aside)."""
    if not fhir_server:
        return FhirAccess(None, None, "the request has no fhirServer")
    if not token and not settings.allow_unauthenticated:
        return FhirAccess(None, None, "the request has no fhirAuthorization token")
    try:
        settings.policy.check(fhir_server)
    except FhirServerNotAllowed as exc:
        log.warning("fhirServer refused: %s", exc)
        return FhirAccess(None, None, f"fhirServer not allowed: {exc}")
    return FhirAccess(fhir_server, token)


def gather_chart(
    prefetch: Mapping[str, Any],
    patient_id: str,
    templates: Mapping[str, str],
    access: FhirAccess,
    settings: ChartSettings,
    deadline: float,
    draft_orders: Sequence[Resource] = (),
) -> Chart:
    """Use prefetch where given, fetch the rest concurrently, raise 412 if neither is possible.

    Medications referenced by id (``medicationReference: Medication/x``, common in Epic) are read
    from the server in a second round, so the drug can be identified.
    """
    chart = Chart()
    client = None
    if access.server:
        client = FhirClient(
            access.server,
            access.token,
            settings.session,
            deadline,
            max_pages=settings.max_pages,
            host_limits=settings.host_limits,
        )
    jobs: dict[str, Callable[[], Any]] = {}
    missing: list[str] = []
    for key, template in templates.items():
        category = category_of_key(key)
        value = prefetch.get(key, _ABSENT)
        if value is None:
            if category == D.PATIENT:
                chart.unavailable[category] = PATIENT_NOT_FOUND
                continue
            chart.resources[category] = []
            continue
        contents = None
        if value is _ABSENT:
            failure = None
        elif is_bundle(value):  # one walk: its error, its resources and its reports
            spec = CATEGORIES[category]
            contents = read_bundle(value, spec.resource_types, spec.prefetch_key)
            failure = contents.failure
        else:
            failure = prefetch_failure(value)
        if value is not _ABSENT and failure is None:
            _use_prefetch(chart, category, value, contents, client, jobs)
            continue
        if failure is not None:  # issue codes only: diagnostics may name the patient
            log.info("prefetch %s reports an error (%s)", key, outcome_issue_codes(value))
        if client is None:
            if failure is None and CATEGORIES[category].absent_if_not_offered:
                chart.resources[category] = []  # the EHR does not offer it: none to read
                chart.not_offered.append(key)
                continue
            missing.append(key)
            reason = failure or "not prefetched"
            chart.unavailable[category] = f"{reason}; FHIR server not usable ({access.refusal})"
            continue
        jobs[key] = _fetch_job(client, category, template.replace(PATIENT_TOKEN, patient_id))
    if set(missing) & REQUIRED_KEYS:
        # Spec #http-status-codes: required data neither prefetched nor fetchable -> 412. The
        # answer names every key the discovery asks for and the request lacks.
        missing = [key for key in templates if key in {*missing, *chart.not_offered}]
        raise PreconditionFailed(
            "Prefetch data is missing and the FHIR server cannot be used "
            f"({access.refusal}): {', '.join(missing)}",
            extra={"missingPrefetch": missing},
        )
    if jobs:
        for key, result in run_concurrently(settings.executor, jobs, deadline).items():
            category = category_of_key(key)
            if isinstance(result, FhirFetchError):
                chart.unavailable[category] = str(result)
                chart.fetch_failed.append(key)
                chart.resources.pop(category, None)
                continue
            chart.fetched.append(key)
            _store(chart, category, result)
    if client is not None:
        _read_referenced_medications(chart, draft_orders, client, settings, deadline)
    return chart


MAX_MEDICATION_READS = 25


def _read_referenced_medications(
    chart: Chart,
    draft_orders: Sequence[Resource],
    client: FhirClient,
    settings: ChartSettings,
    deadline: float,
) -> None:
    """Read the Medication resources that orders, statements and dispenses point at but nobody
    sent (kept with the orders: the mapping resolves references across all three)."""
    orders = [r for c in MEDICATION_CATEGORIES for r in chart.resources.get(c, [])]
    orders += draft_orders
    wanted = missing_medications(orders, client.base_url, ACCEPTED_FHIR_ID)
    jobs: dict[str, Callable[[], Any]] = {
        ref: functools.partial(client.read, ref) for ref in wanted[:MAX_MEDICATION_READS]
    }
    for ref, result in run_concurrently(settings.executor, jobs, deadline).items():
        if is_resource_of(result, "Medication"):
            chart.resources.setdefault(D.MEDICATIONS, []).append(result)
        else:  # the order stays unidentified and the mapping reports the broken reference
            why = result.log_reason if isinstance(result, FhirFetchError) else "not a Medication"
            log.info("referenced %s could not be read: %s", ref, why)


_ABSENT: Any = object()


def _fetch_job(client: FhirClient, category: D, query: str) -> Callable[[], Any]:
    if category == D.PATIENT:

        def read_patient() -> Any:
            patient = client.read(query)
            if patient is None:
                raise FhirFetchError(PATIENT_NOT_FOUND)
            return patient

        return read_patient
    return lambda: client.search(query)


def _use_prefetch(
    chart: Chart,
    category: D,
    value: Resource,
    contents: BundleContents | None,
    client: FhirClient | None,
    jobs: dict[str, Callable[[], Any]],
) -> None:
    """Keep a prefetched resource, or the ``contents`` read from a prefetched Bundle (or page on
    from it when it has more pages and the server may be used)."""
    if contents is None:
        _store(chart, category, value)
        return
    if next_link(value) is None:
        _keep(chart, category, contents.resources, contents.unreadable)
    elif client is not None:
        jobs[prefetch_key(category)] = lambda: client.continue_paging(value)
    else:
        _keep(chart, category, contents.resources, contents.unreadable)
        chart.unreadable.append(
            Unreadable(
                f"prefetch {prefetch_key(category)}",
                "only the first page was prefetched; later pages could "
                "not be fetched without FHIR server access",
            )
        )


def _store(chart: Chart, category: D, value: Resource | list[Resource]) -> None:
    """Keep resources of the expected types; report the others."""
    spec = CATEGORIES[category]
    kept, unreadable = of_expected_types(
        value if isinstance(value, list) else [value], spec.resource_types, spec.prefetch_key
    )
    _keep(chart, category, kept, unreadable)


def _keep(chart: Chart, category: D, kept: list[Resource], unreadable: list[Unreadable]) -> None:
    chart.unreadable.extend(unreadable)
    if category == D.PATIENT:
        chart.patient = kept[0] if kept else None
        chart.resources[category] = kept[:1]
    else:
        chart.resources.setdefault(category, []).extend(kept)
