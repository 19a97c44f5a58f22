"""Findings -> CDS Hooks cards: ids, the parts every card of a rule repeats, fresh objects."""

from __future__ import annotations

import uuid
from dataclasses import replace

from cds_service.cards import build_cards, new_uuid
from cds_service.rules.model import Finding, RemoveOrder, Suggestion
from fhir_mappings.knowledge import Knowledge
from tests.support.clinical import voclosporin


def _finding(rule_id: str, knowledge: Knowledge) -> Finding:
    return Finding(
        "warning",
        "summary",
        "detail",
        (Suggestion("Remove it", (RemoveOrder(voclosporin()),)),),
        rule_id=rule_id,
        citation=knowledge.rules[rule_id].section,
    )


def test_new_uuid_is_a_random_version_4_uuid():
    """Card and suggestion ids read as uuid4 does write them, and do not repeat."""
    ids = [new_uuid() for _ in range(200)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(text)
        assert (parsed.version, parsed.variant) == (4, uuid.RFC_4122)
        assert str(parsed) == text


def test_cards_of_one_rule_share_no_object(knowledge: Knowledge):
    """Two cards of the same rule are equal in their fixed parts but never the same objects."""
    first, second = build_cards(
        (_finding("egfr-decline", knowledge), _finding("egfr-decline", knowledge)), knowledge, ()
    )
    a, b = first.body, second.body
    assert a["source"] == b["source"]
    assert a["overrideReasons"] == b["overrideReasons"]
    assert a["source"] is not b["source"]
    assert a["source"]["topic"] is not b["source"]["topic"]
    assert a["overrideReasons"] is not b["overrideReasons"]
    assert all(x is not y for x, y in zip(a["overrideReasons"], b["overrideReasons"], strict=True))
    assert a["uuid"] != b["uuid"]
    assert first.suggestion_uuids != second.suggestion_uuids


def test_card_footer_and_source_follow_the_knowledge_given(knowledge: Knowledge):
    """Parts made once per Knowledge are made again for another one (a local policy, a test)."""
    finding = _finding("egfr-decline", knowledge)
    (before,) = build_cards((finding,), knowledge, ())
    other = replace(knowledge, version="9.9.9", label_url="https://example.org/label")
    (after,) = build_cards((finding,), other, ())
    assert f"knowledge {knowledge.full_version}_" in before.body["detail"]
    assert after.body["detail"].endswith(f"knowledge {other.full_version}_")
    assert after.body["source"]["url"] == "https://example.org/label"
    (again,) = build_cards((finding,), knowledge, ())
    assert again.body["detail"] == before.body["detail"]
