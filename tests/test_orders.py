"""fhir_mappings.orders: the one Dosage writer behind the update suggestion and the CLI."""

from __future__ import annotations

from fhir_mappings.dosage import dosage
from fhir_mappings.orders import dosage_instruction, with_doses

MG = {"value": 7.9, "unit": "mg", "system": "http://unitsofmeasure.org", "code": "mg"}


def test_plain_dosage_is_what_the_cli_sends():
    """Without capsule size the text names only mg and frequency (the CLI's draft orders)."""
    assert dosage_instruction(7.9, 2) == {
        "text": "7.9 mg by mouth twice daily",
        "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
        "doseAndRate": [{"doseQuantity": MG}],
    }


def test_equal_untimed_doses_become_one_instruction_keeping_the_route():
    """15.8 mg twice daily: one instruction, capsules counted, route kept, text replaced."""
    draft = {
        "resourceType": "MedicationRequest",
        "id": "d1",
        "dosageInstruction": [{"text": "as directed", "route": {"text": "oral"}}],
    }
    updated = with_doses(draft, ((15.8, None), (15.8, None)), 7.9)
    assert updated["id"] == "d1"
    assert updated["dosageInstruction"] == [
        {
            "route": {"text": "oral"},
            "text": "15.8 mg (2 x 7.9 mg capsules) by mouth twice daily",
            "timing": {"repeat": {"frequency": 2, "period": 1, "periodUnit": "d"}},
            "doseAndRate": [{"doseQuantity": {**MG, "value": 15.8}}],
        }
    ]
    assert draft["dosageInstruction"][0]["text"] == "as directed"  # the draft is not changed


def test_timed_doses_become_instructions_that_apply_together():
    """15.8 mg AM + 7.9 mg PM: one instruction per dose, with when and no sequence (R4: a
    different sequence would mean one after the other)."""
    updated = with_doses({}, ((15.8, "MORN"), (7.9, "EVE")), 7.9)
    first, second = updated["dosageInstruction"]
    assert first["text"] == "15.8 mg (2 x 7.9 mg capsules) by mouth in the morning"
    assert first["timing"]["repeat"]["when"] == ["MORN"]
    assert "sequence" not in first
    assert "sequence" not in second
    assert second["text"] == "7.9 mg (1 x 7.9 mg capsules) by mouth in the evening"


def test_clock_times_are_written_as_time_of_day():
    """A dose read from timeOfDay goes back to timeOfDay (when takes only EventTiming codes)."""
    updated = with_doses({}, ((15.8, "08:00:00"), (7.9, "20:00:00")), 7.9)
    repeats = [i["timing"]["repeat"] for i in updated["dosageInstruction"]]
    assert [r.get("timeOfDay") for r in repeats] == [["08:00:00"], ["20:00:00"]]
    assert all("when" not in r for r in repeats)


def test_written_dosage_reads_back_as_the_same_doses(knowledge):
    """What the writer writes, the dosage reader reads as the same mg and doses per day."""
    written = with_doses({}, ((15.8, "MORN"), (7.9, "EVE")), 7.9)
    read = dosage(written, knowledge.dose_vocabulary, 7.9)
    assert read is not None
    assert [(d.mg, d.when) for d in read.doses] == [(15.8, "MORN"), (7.9, "EVE")]
    assert read.doses_per_day == 2.0
