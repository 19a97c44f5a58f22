"""fhir_mappings.bundles: reading and writing Bundles and OperationOutcomes."""

from __future__ import annotations

from fhir_mappings.bundles import (
    collection_bundle,
    error_outcome,
    merged_searchset,
    operation_outcome_text,
    operation_outcome_texts,
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
