"""Orchestration without Flask: hook request -> chart -> facts -> rules -> cards."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from marshmallow import ValidationError

from cds_service.cards import BuiltCard, build_cards
from cds_service.chart import ChartSettings, decide_access, gather_chart, prefetch_templates
from cds_service.contract import SERVICE_ID_PREFIX
from cds_service.errors import BadRequest, NotFound
from cds_service.repeats import OverrideLookup, RepeatFilter
from cds_service.rules.engine import Evaluation, evaluate
from cds_service.schemas import CONTEXT_SCHEMAS, field_errors
from fhir_mappings.build import build_facts
from fhir_mappings.bundles import bundle_resources
from fhir_mappings.categories import prefetch_key
from fhir_mappings.codes import Terminology
from fhir_mappings.facts import PatientFacts, Unreadable
from fhir_mappings.knowledge import Knowledge
from fhir_mappings.references import by_reference
from fhir_mappings.validate import warm_up

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServiceDefinition:
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


def service_definitions(knowledge: Knowledge) -> dict[str, ServiceDefinition]:
    templates = prefetch_templates(knowledge)
    return {
        f"{SERVICE_ID_PREFIX}{hook}": ServiceDefinition(
            id=f"{SERVICE_ID_PREFIX}{hook}",
            hook=hook,
            title=f"Voclosporin (LUPKYNIS) safety ({hook})",
            description=description,
            prefetch=templates,
        )
        for hook, description in _DESCRIPTIONS.items()
    }


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
    ) -> None:
        self.knowledge = knowledge
        self.terminology = Terminology(knowledge)
        warm_up()
        self.services = service_definitions(knowledge)
        self.chart_settings = chart_settings
        self.deadline_ms = deadline_ms
        self.clock = clock
        self.repeats = RepeatFilter(overrides, repeat_window_days, knowledge)

    def service(self, service_id: str) -> ServiceDefinition:
        try:
            return self.services[service_id]
        except KeyError:
            raise NotFound(f"No CDS service with id '{service_id}'") from None

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
            hook=service.hook,
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
        findings = self.repeats.apply(evaluation.findings, context["patient_id"], started_at)
        return HookOutcome(
            service=service,
            hook_instance=str(request["hook_instance"]),
            patient_id=context["patient_id"],
            cards=build_cards(findings, self.knowledge, by_reference(drafts)),
            evaluation=evaluation,
            unavailable=tuple(sorted(prefetch_key(c) for c in chart.unavailable)),
            fetched=tuple(chart.fetched),
            started_at=started_at,
            duration_ms=(time.monotonic() - started) * 1000,
            knowledge_version=self.knowledge.full_version,
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
