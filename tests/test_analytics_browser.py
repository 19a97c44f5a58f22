"""The analytics page in a real headless Chromium, served by a real HTTP server."""

from __future__ import annotations

import json
import threading
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from flask import Flask
from werkzeug.serving import make_server

from cds_service.analytics import FIRED_COLOR, RATE_COLOR
from cds_service.storage import get_storage, shutdown_storage
from tests.support.ci import artifacts_dir
from tests.support.factories import make_app, seed
from tests.support.pages import parse_analytics_page, percent
from tests.support.png import read_png

if TYPE_CHECKING:
    from tests.support.browser import Chromium

pytest_plugins = ["tests.support.browser"]
pytestmark = pytest.mark.browser

TOKEN = "browser-test-token"


@dataclass(frozen=True)
class LiveServer:
    """A running analytics server and its base URL."""

    app: Flask
    url: str

    def get_json(self, path: str, token: str | None = None) -> Any:
        """GET a JSON document from the server over real HTTP."""
        request = urllib.request.Request(self.url + path)
        if token:
            request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=10) as response:
            return json.load(response)


def serve(app: Flask) -> Iterator[LiveServer]:
    """Serve ``app`` on a free loopback port in a thread until the generator is closed."""
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="analytics-server", daemon=True)
    thread.start()
    try:
        yield LiveServer(app, f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Serve an app with seeded SQLite data (development mode: analytics open)."""
    app = make_app(tmp_path_factory.mktemp("analytics-live"))
    seed(get_storage(app))
    try:
        yield from serve(app)
    finally:
        shutdown_storage(app)


@pytest.fixture(scope="module")
def protected_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Serve an app whose analytics need a token, as in production."""
    app = make_app(
        tmp_path_factory.mktemp("analytics-protected"),
        CDS_ANALYTICS_TOKEN=TOKEN,
        CDS_JWT_ISSUERS=["https://ehr.example.org"],
    )
    seed(get_storage(app))
    try:
        yield from serve(app)
    finally:
        shutdown_storage(app)


def hex_rgb(color: str) -> tuple[int, int, int]:
    """Turn #rrggbb into an RGB triple."""
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


def test_page_loads_and_its_numbers_match_the_json(
    chromium: Chromium, live_server: LiveServer
) -> None:
    """In Chromium the page renders its tables and charts with the JSON's numbers."""
    dom = chromium.dump_dom(live_server.url + "/analytics")
    page = parse_analytics_page(dom)
    assert page.title.startswith("Override analytics")
    assert page.since is not None
    body = live_server.get_json("/analytics/rules?since=" + quote(page.since))
    assert list(page.rules) == [rule["rule_id"] for rule in body["rules"]]
    for rule in body["rules"]:
        cells = page.rules[rule["rule_id"]]
        for field in ("evaluated", "fired", "accepted", "overridden", "no_feedback", "quieted"):
            assert cells[field].text == str(rule[field]), (rule["rule_id"], field)
        assert cells["override_rate"].text == percent(rule["override_rate"])
        if rule["fired"]:
            assert sum(n for _, n in page.bars[rule["rule_id"]]) == rule["fired"]
    assert page.totals["fired"].text == str(body["totals"]["fired"])
    assert page.rate_points["ddi-strong-cyp3a4"] > 0


def test_page_shows_cards_quieted_as_repeats(chromium: Chromium, live_server: LiveServer) -> None:
    """The rule table and the totals show how many cards were quieted as a repeat, per rule."""
    page = parse_analytics_page(chromium.dump_dom(live_server.url + "/analytics"))
    body = live_server.get_json("/analytics/rules?since=" + quote(page.since or ""))
    quieted = {rule["rule_id"]: rule["quieted"] for rule in body["rules"]}
    assert quieted == {rule_id: 0 for rule_id in quieted} | {"bp-uncontrolled": 2}
    assert {rule_id: int(cells["quieted"].text) for rule_id, cells in page.rules.items()} == quieted
    assert page.totals["quieted"].text == "2"


def test_chart_is_drawn_on_screen(chromium: Chromium, live_server: LiveServer) -> None:
    """A screenshot shows the bars and the override-rate line (kept in tests/artifacts/)."""
    shot = chromium.screenshot(live_server.url + "/analytics", artifacts_dir() / "analytics.png")
    png = read_png(shot)
    assert (png.width, png.height) == (1280, 900)
    bar_pixels = png.count_color(hex_rgb(FIRED_COLOR), tolerance=12)
    line_pixels = png.count_color(hex_rgb(RATE_COLOR), tolerance=12)
    assert bar_pixels > 2000, f"too few bar pixels ({bar_pixels}): is the chart drawn?"
    assert line_pixels > 300, f"too few override-rate pixels ({line_pixels})"
    # The whole page (charts and both tables) for a person reviewing the CI artefacts.
    chromium.screenshot(
        live_server.url + "/analytics", artifacts_dir() / "analytics-full.png", height=1800
    )


def test_protected_page_opens_with_the_token_only(
    chromium: Chromium, protected_server: LiveServer
) -> None:
    """Without credentials the browser gets the 401; with the token as Basic password, the page."""
    with pytest.raises(AssertionError, match="ERR_INVALID_AUTH_CREDENTIALS"):
        chromium.dump_dom(protected_server.url + "/analytics")  # a person would get a prompt
    host = protected_server.url.removeprefix("http://")
    dom = chromium.dump_dom(f"http://pharmacist:{TOKEN}@{host}/analytics")
    page = parse_analytics_page(dom)
    body = protected_server.get_json("/analytics/rules?since=" + quote(page.since or ""), TOKEN)
    assert page.totals["fired"].text == str(body["totals"]["fired"])
