"""Orchestration without Flask: hook request -> chart -> facts -> rules -> cards."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from marshmallow import ValidationError

from cds_service.cards import BuiltCard, build_cards
from cds_service.chart import ChartSettings, decide_access, gather_chart
from cds_service.contract import ORDERS_SERVICE_HOOKS, ORDERS_SERVICE_ID, SERVICE_ID_PREFIX
from cds_service.errors import BadRequest, NotFound, TooManyCards, TooManyDraftOrders
from cds_service.repeats import OverrideLookup, RepeatFilter
from cds_service.rules.engine import Evaluation, evaluate
from cds_service.schemas import CONTEXT_SCHEMAS, field_errors
from fhir_mappings.build import build_facts
from fhir_mappings.bundles import bundle_resources
from fhir_mappings.categories import prefetch_key, prefetch_templates
from fhir_mappings.codes import Terminology
from fhir_mappings.facts import PatientFacts, Unreadable
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.validate import warm_up

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceDefinition:
    """One discovery entry: the service ``id`` answering one ``hook``."""

    id: str
    hook: str
    title: str
    description: str
    prefetch: dict[str, str]

    def discovery(self) -> dict[str, Any]:
        return {
            "hook": self.hook,
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "prefetch": self.prefetch,
            "usage_requirements": (
                "Send prefetch for every key, or fhirServer with fhirAuthorization so the "
                "service can fetch what is missing. Without patient and medications the call "
                "answers 412; other missing keys are named on a data-unavailable card."
            ),
        }


@dataclass(frozen=True)
class ServiceEndpoint:
    """One service id, ``POST /cds-services/{id}``: its discovery entries, one per hook.

    Several hooks at one id is how a service asks a client to replace its earlier cards when
    the next hook fires (CDS Hooks 2.0 #update-stale-guidance). An id that is not ``listed``
    still answers, for sites that registered it, but discovery does not offer it.
    """

    id: str
    entries: Mapping[str, ServiceDefinition]  # by hook, in discovery order
    listed: bool = True

    def __post_init__(self) -> None:
        if not self.entries:
            raise ValueError(f"service '{self.id}' answers no hook")
        for hook, entry in self.entries.items():
            if (entry.id, entry.hook) != (self.id, hook):
                raise ValueError(f"service '{self.id}' lists {entry.id} ({entry.hook}) as {hook}")
            if entry.prefetch != self.prefetch:
                raise ValueError(f"service '{self.id}' asks {hook} for other prefetch templates")

    @property
    def hooks(self) -> tuple[str, ...]:
        return tuple(self.entries)

    @property
    def prefetch(self) -> dict[str, str]:
        """The prefetch templates: every hook at one id asks for the same chart."""
        return next(iter(self.entries.values())).prefetch

    def for_hook(self, hook: str) -> ServiceDefinition:
        """The entry answering ``hook``; a hook this id does not serve is a 400 naming the field."""
        try:
            return self.entries[hook]
        except KeyError:
            pass
        if len(self.hooks) == 1:
            handles, expected = f"hook '{self.hooks[0]}'", f"must be '{self.hooks[0]}'"
        else:
            quoted = ", ".join(f"'{h}'" for h in self.hooks)
            handles, expected = f"hooks {quoted}", f"must be one of {quoted}"
        raise BadRequest(
            f"Service '{self.id}' handles {handles}, not '{hook}'",
            fields={"hook": [f"{expected} for this service"]},
        )


_DESCRIPTIONS = {
    "order-select": "Voclosporin (LUPKYNIS) safety checks when a medication order is selected: "
    "CYP3A4 interactions, live vaccines, renal function, blood pressure, potassium, dose, "
    "background therapy and prior-authorization criteria.",
    "order-sign": "Voclosporin (LUPKYNIS) safety checks before orders are signed: CYP3A4 "
    "interactions, live vaccines, baseline and falling eGFR, blood pressure, potassium, dose, "
    "treatment duration and prior-authorization criteria.",
    "medication-prescribe": "Deprecated hook, kept for older EHRs: the same voclosporin "
    "(LUPKYNIS) safety checks, on the draft medications being prescribed.",
}
_SHARED_ID_NOTES = {
    "order-select": " Shares its id with the order-sign entry: a client that updates stale "
    "guidance replaces these cards with the order-sign cards.",
    "order-sign": " Shares its id with the order-select entry: a client that updates stale "
    "guidance shows these cards in place of the order-select cards.",
}


def service_endpoints(knowledge: Knowledge) -> dict[str, ServiceEndpoint]:
    """Every id the service answers, the listed ones first in discovery order.

    ``voclosporin-orders`` answers order-select and order-sign; medication-prescribe keeps its
    own id (no client fires it together with the order hooks). The per-hook order ids answer
    as before but are not listed: a client calling every listed service for a hook would
    otherwise get each card twice, once per id, and could not replace either set.
    order-sign is listed after order-select on purpose: a client that keeps one entry per id
    (the CDS Hooks Sandbox stores services by URL) keeps the last, the hook that checks the dose.
    """
    templates = prefetch_templates(knowledge)

    def entry(service_id: str, hook: str, note: str = "") -> ServiceDefinition:
        return ServiceDefinition(
            id=service_id,
            hook=hook,
            title=f"Voclosporin (LUPKYNIS) safety ({hook})",
            description=_DESCRIPTIONS[hook] + note,
            prefetch=templates,
        )

    prescribe = f"{SERVICE_ID_PREFIX}medication-prescribe"
    endpoints = [
        ServiceEndpoint(
            ORDERS_SERVICE_ID,
            {h: entry(ORDERS_SERVICE_ID, h, _SHARED_ID_NOTES[h]) for h in ORDERS_SERVICE_HOOKS},
        ),
        ServiceEndpoint(
            prescribe, {"medication-prescribe": entry(prescribe, "medication-prescribe")}
        ),
        *(
            ServiceEndpoint(
                f"{SERVICE_ID_PREFIX}{hook}",
                {hook: entry(f"{SERVICE_ID_PREFIX}{hook}", hook)},
                listed=False,
            )
            for hook in ORDERS_SERVICE_HOOKS
        ),
    ]
    return {endpoint.id: endpoint for endpoint in endpoints}


@dataclass(frozen=True)
class HookOutcome:
    """Everything one hook call produced: cards for the EHR, the rest for logs and audit."""

    service: ServiceDefinition
    hook_instance: str
    patient_id: str
    cards: list[BuiltCard]
    evaluation: Evaluation
    unavailable: tuple[str, ...]
    fetched: tuple[str, ...]
    started_at: datetime
    duration_ms: float
    knowledge_version: str
    fetch_failed: tuple[str, ...] = ()  # prefetch keys whose FHIR query failed (for metrics)

    def response(self) -> dict[str, Any]:
        return {"cards": [card.body for card in self.cards]}


class CdsService:
    """Holds the loaded knowledge and the shared I/O settings; one instance per app."""

    def __init__(
        self,
        knowledge: Knowledge,
        chart_settings: ChartSettings,
        deadline_ms: int,
        clock: Callable[[], datetime],
        overrides: OverrideLookup | None = None,
        repeat_window_days: int = 0,
        *,
        max_draft_orders: int = 100,
        max_cards: int = 100,
    ) -> None:
        self.knowledge = knowledge
        self.terminology = Terminology(knowledge)
        warm_up()
        self.services = service_endpoints(knowledge)
        # Every hook some id answers (bounded label values for metrics and logs).
        self.hooks = frozenset(hook for e in self.services.values() for hook in e.entries)
        self.chart_settings = chart_settings
        self.deadline_ms = deadline_ms
        self.clock = clock
        self.repeats = RepeatFilter(overrides, repeat_window_days, knowledge)
        self.max_draft_orders = max_draft_orders
        self.max_cards = max_cards

    def service(self, service_id: str) -> ServiceEndpoint:
        """The service answering at ``service_id``, listed or not; else 404 listing the ids."""
        try:
            return self.services[service_id]
        except KeyError:
            listed = [known for known, endpoint in self.services.items() if endpoint.listed]
            raise NotFound(
                f"No CDS service with id '{service_id}'", extra={"services": listed}
            ) from None

    def discovery_entries(self) -> list[ServiceDefinition]:
        """What discovery lists: each hook of each listed id, one entry apiece (#discovery)."""
        return [
            entry
            for endpoint in self.services.values()
            if endpoint.listed
            for entry in endpoint.entries.values()
        ]

    def call(self, service: ServiceDefinition, request: dict[str, Any]) -> HookOutcome:
        """Run one hook call; ``request`` is the loaded HookRequestSchema (snake_case)."""
        started = time.monotonic()
        started_at = self.clock()
        if request["hook"] != service.hook:
            raise BadRequest(
                f"Service '{service.id}' handles hook '{service.hook}', not '{request['hook']}'",
                fields={"hook": [f"must be '{service.hook}' for this service"]},
            )
        context = load_context(service.hook, request["context"])
        draft_bundle = context.get("draft_orders") or context.get("medications") or {}
        selections = frozenset(context["selections"]) if "selections" in context else None
        authorization = request.get("fhir_authorization") or {}
        access = decide_access(
            request.get("fhir_server"), authorization.get("access_token"), self.chart_settings
        )
        drafts = bundle_resources(draft_bundle)
        if len(drafts) > self.max_draft_orders:  # before any fetch or check: work grows with it
            field = "draftOrders" if "draft_orders" in context else "medications"
            raise TooManyDraftOrders(f"context.{field}", len(drafts), self.max_draft_orders)
        chart = gather_chart(
            request.get("prefetch") or {},
            context["patient_id"],
            service.prefetch,
            access,
            self.chart_settings,
            started + self.deadline_ms / 1000.0,
            draft_orders=drafts,
        )
        facts = build_facts(
            terminology=self.terminology,
            now=started_at,
            # order-select fires when an order is picked, possibly before its dose is entered.
            order_entry_complete=service.hook != "order-select",
            patient_id=context["patient_id"],
            patient=chart.patient,
            chart=chart.resources,
            draft_orders=drafts,
            selections=selections,
            unavailable=chart.unavailable,
        )
        if chart.unreadable:
            facts = _with_unreadable(facts, chart.unreadable)
        evaluation = evaluate(facts, self.knowledge)
        if len(evaluation.findings) > self.max_cards:  # one card per finding
            raise TooManyCards(len(evaluation.findings), self.max_cards)
        findings = self.repeats.apply(evaluation.findings, context["patient_id"], started_at)
        return HookOutcome(
            service=service,
            hook_instance=str(request["hook_instance"]),
            patient_id=context["patient_id"],
            cards=build_cards(findings, self.knowledge, drafts),
            evaluation=evaluation,
            unavailable=tuple(sorted(prefetch_key(c) for c in chart.unavailable)),
            fetched=tuple(chart.fetched),
            started_at=started_at,
            duration_ms=(time.monotonic() - started) * 1000,
            knowledge_version=self.knowledge.full_version,
            fetch_failed=tuple(chart.fetch_failed),
        )


CONTEXT_LOADERS = {hook: schema() for hook, schema in CONTEXT_SCHEMAS.items()}


def load_context(hook: str, context: dict[str, Any]) -> dict[str, Any]:
    """Validate the hook's context with its schema; a bad field is a 400 naming it."""
    try:
        loaded: dict[str, Any] = CONTEXT_LOADERS[hook].load(context)
    except ValidationError as exc:
        raise BadRequest(
            f"The context does not fit the '{hook}' hook",
            fields=field_errors(exc.messages, "context"),
        ) from exc
    return loaded


def _with_unreadable(facts: PatientFacts, extra: list[Unreadable]) -> PatientFacts:
    return replace(facts, unreadable=(*extra, *facts.unreadable))
