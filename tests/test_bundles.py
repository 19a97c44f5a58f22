"""fhir_mappings.bundles: reading and writing Bundles and OperationOutcomes."""

from __future__ import annotations

from fhir_mappings.bundles import (
    bundle_error,
    bundle_resources,
    collection_bundle,
    error_outcome,
    merged_searchset,
    of_expected_types,
    operation_outcome_text,
    operation_outcome_texts,
    read_bundle,
    resource_ids,
    search_matches,
)


def _page(*ids: str, next_url: str | None = None, **extra: object) -> dict:
    page: dict = {
        "resourceType": "Bundle",
        "type": "searchset",
        "entry": [{"resource": {"resourceType": "Patient", "id": i}} for i in ids],
        **extra,
    }
    if next_url:
        page["link"] = [{"relation": "next", "url": next_url}]
    return page


def test_pages_merge_into_one_searchset_keeping_the_first_total_and_the_last_next():
    """A client's merged prefetch: every entry, page one's total, the cap's remaining link."""
    merged = merged_searchset(
        [_page("a", next_url="http://x/2", total=3), _page("b", next_url="http://x/3")]
    )
    assert [e["resource"]["id"] for e in merged["entry"]] == ["a", "b"]
    assert merged["total"] == 3
    assert merged["link"] == [{"relation": "next", "url": "http://x/3"}]
    assert "link" not in merged_searchset([_page("a")])


def test_search_matches_skip_includes_and_outcomes():
    """Only entries whose search mode is match (or unstated) count as results."""
    bundle = _page("a", "b")
    bundle["entry"][1]["search"] = {"mode": "include"}
    bundle["entry"].append(
        {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}}
    )
    assert search_matches(bundle) == 1


def test_outcome_texts_first_for_cards_all_for_people():
    """The card shows the first issue with its code; the CLI joins every issue's text."""
    outcome = {
        "resourceType": "OperationOutcome",
        "issue": [
            {"code": "not-found", "diagnostics": "no such patient"},
            "junk",
            {"code": "processing", "details": {"text": "second"}},
            {"code": "informational"},
        ],
    }
    assert operation_outcome_text(outcome) == "not-found: no such patient"
    assert operation_outcome_texts(outcome) == ["no such patient", "second"]
    assert operation_outcome_texts(error_outcome("HTTP 500 from x")) == ["HTTP 500 from x"]


def test_collection_bundle_and_resource_ids_round_trip():
    """What the CLI writes as draftOrders reads back as the same resources."""
    bundle = collection_bundle([{"resourceType": "Patient", "id": "p1"}, {"resourceType": "X"}])
    assert bundle["type"] == "collection"
    assert resource_ids(bundle, "Patient") == ["p1"]
    assert resource_ids("not a bundle", "Patient") == []


def _entry(resource: object, mode: str | None = None) -> dict:
    entry: dict = {"resource": resource}
    if mode:
        entry["search"] = {"mode": mode}
    return entry


def _outcome(severity: str, text: str) -> dict:
    issue = {"severity": severity, "code": "processing", "diagnostics": text}
    return {"resourceType": "OperationOutcome", "issue": [issue]}


def test_read_bundle_does_in_one_walk_what_the_three_readers_do():
    """One walk gives what bundle_error, bundle_resources and of_expected_types give: kept
    resources in order, a report per unexpected entry, outcome-mode entries skipped."""
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            _entry({"resourceType": "Observation", "id": "o1"}, "match"),
            _entry(_outcome("warning", "ignored _sort"), "outcome"),
            _entry({"resourceType": "Condition", "id": "c1"}),
            "junk",
            _entry({"id": "no-type"}),
            _entry(_outcome("information", "note")),
            _entry({"resourceType": "Observation", "id": "o2"}, "include"),
        ],
    }
    expected = frozenset({"Observation"})
    contents = read_bundle(bundle, expected, "egfr")
    kept, unreadable = of_expected_types(bundle_resources(bundle), expected, "egfr")
    assert contents.failure is bundle_error(bundle) is None
    assert [r["id"] for r in contents.resources] == ["o1", "o2"]
    assert (contents.resources, contents.unreadable) == (kept, unreadable)
    assert [u.reference for u in contents.unreadable] == [
        "Condition/c1",
        "prefetch egfr",
        "prefetch egfr",
    ]


def test_read_bundle_reports_the_first_error_outcome_and_nothing_else():
    """An error OperationOutcome anywhere (even after results) makes the Bundle a failure."""
    bundle = {
        "resourceType": "Bundle",
        "entry": [
            _entry({"resourceType": "Observation", "id": "o1"}),
            _entry(_outcome("error", "timeout"), "outcome"),
            _entry(_outcome("fatal", "later")),
        ],
    }
    contents = read_bundle(bundle, frozenset({"Observation"}), "egfr")
    assert contents.failure == bundle_error(bundle)
    assert contents.failure is not None
    assert "timeout" in contents.failure
    assert (contents.resources, contents.unreadable) == ([], [])
