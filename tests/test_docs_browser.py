"""GET /docs in a real headless Chromium, served by a real HTTP server on 127.0.0.1.

Swagger UI builds the page in the browser from /openapi.yaml, so only a browser can tell whether
the operations really render. The server records every path the browser asks for, which proves
the page was assembled from this service alone (the machine has no internet either).
"""

from __future__ import annotations

import html
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
import yaml
from werkzeug.serving import make_server

from cds_service import close_app
from tests.conftest import make_app
from tests.support.ci import artifacts_dir
from tests.support.png import read_png
from tests.test_docs import OPENAPI, with_docs

if TYPE_CHECKING:
    from tests.support.browser import Chromium

pytest_plugins = ["tests.support.browser"]
pytestmark = pytest.mark.browser

HTTP_METHODS = ("get", "post", "put", "patch", "delete")
GET_BLUE = (0x61, 0xAF, 0xFE)  # Swagger UI's GET badge
POST_GREEN = (0x49, 0xCC, 0x90)  # Swagger UI's POST badge
BROKEN_PAGE = ("Failed to load API definition", "Resolver error", "Errors</h4>")


@dataclass
class DocsServer:
    """The app behind werkzeug in a thread, remembering each path requested."""

    url: str
    requested: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def docs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DocsServer]:
    app = with_docs(make_app(tmp_path_factory.mktemp("docs-browser")))
    requested: list[str] = []

    def recording(environ: dict[str, Any], start_response: Any) -> Any:
        requested.append(environ["PATH_INFO"])
        return app(environ, start_response)

    server = make_server("127.0.0.1", 0, recording, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="docs-server", daemon=True)
    thread.start()
    try:
        yield DocsServer(f"http://127.0.0.1:{server.server_port}", requested)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
        close_app(app)


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    return loaded


def visible_text(dom: str) -> str:
    """The page's text as a person reads it (tags removed, entities decoded)."""
    return html.unescape(re.sub(r"<[^>]+>", " ", dom))


def test_every_operation_renders(
    chromium: Chromium, docs_server: DocsServer, spec: dict[str, Any]
) -> None:
    """Each path and summary of openapi.yaml is on the page, built from local files only."""
    docs_server.requested.clear()
    dom = chromium.dump_dom(docs_server.url + "/docs")
    rendered_paths = re.findall(r'class="opblock-summary-path[^"]*" data-path="([^"]+)"', dom)
    assert set(rendered_paths) == set(spec["paths"])
    assert "/cds-services/{serviceId}" in rendered_paths
    text = " ".join(visible_text(dom).split())
    assert spec["info"]["title"] in text
    for path, item in spec["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                assert " ".join(item[method]["summary"].split()) in text, (method, path)
    for marker in BROKEN_PAGE:
        assert marker not in dom
    assert "/openapi.yaml" in docs_server.requested
    assert "/docs/swagger-ui/swagger-ui-bundle.js" in docs_server.requested
    assert "/docs/static/swagger-initializer.js" in docs_server.requested


def test_hook_call_shows_its_examples(
    chromium: Chromium, docs_server: DocsServer, spec: dict[str, Any]
) -> None:
    """The hook call opened by deep link shows its example body and cards (screenshot kept)."""
    operation = spec["paths"]["/cds-services/{serviceId}"]["post"]
    anchor = f"#/{quote(operation['tags'][0])}/{operation['operationId']}"
    dom = chromium.dump_dom(docs_server.url + "/docs" + anchor)
    text = visible_text(dom)
    assert "Example Value" in text
    request = next(iter(operation["requestBody"]["content"]["application/json"]["examples"]))
    ref = operation["requestBody"]["content"]["application/json"]["examples"][request]["$ref"]
    example = spec["components"]["examples"][ref.rsplit("/", 1)[-1]]["value"]
    assert example["hookInstance"] in text  # the example body itself is on the page
    assert '"draftOrders"' in text
    assert '"cards"' in text  # and the example response
    shot = chromium.screenshot(
        docs_server.url + "/docs" + anchor, artifacts_dir() / "docs-call-service.png", height=2400
    )
    assert read_png(shot).count_color(POST_GREEN, tolerance=10) > 2000


def test_screenshot_shows_the_operations(chromium: Chromium, docs_server: DocsServer) -> None:
    """A screenshot (kept in tests/artifacts/docs.png) shows GET and POST operation bars."""
    shot = chromium.screenshot(docs_server.url + "/docs", artifacts_dir() / "docs.png", height=1600)
    png = read_png(shot)
    assert (png.width, png.height) == (1280, 1600)
    assert png.count_color(GET_BLUE, tolerance=10) > 2000, "no GET operation drawn"
    assert png.count_color(POST_GREEN, tolerance=10) > 2000, "no POST operation drawn"
