"""Whole hook requests (tests/scenarios/*.json) -> the cards a clinician expects."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest

from cds_service import close_app
from cds_service.spec_check import check_response
from tests.conftest import make_app

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.json"))


def test_scenarios_exist():
    """The scenario folder is not silently empty."""
    assert len(SCENARIOS) >= 10


@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(tmp_path, path):
    """The service answers the scenario's request with exactly the expected cards, in order."""
    scenario = json.loads(path.read_text())
    now = datetime.fromisoformat(scenario["now"].replace("Z", "+00:00"))
    app = make_app(tmp_path, CDS_CLOCK=lambda: now)
    try:
        response = app.test_client().post(
            f"/cds-services/{scenario['service']}", json=scenario["request"]
        )
    finally:
        close_app(app)
    assert response.status_code == 200, response.json
    got = [
        {"rule": c["source"]["topic"]["code"], "indicator": c["indicator"]}
        for c in response.json["cards"]
    ]
    assert got == scenario["expect"], scenario["story"]
    assert [v for v in check_response(response.json) if v.severity == "error"] == []
