"""GET /docs: Swagger UI served offline from the swagger-ui-bundle package, on our contract.

The browser test (tests/test_docs_browser.py) checks what a person sees; these check what the
page is made of: every asset from this service, nothing from a CDN, no inline script, and a
contract whose every operation carries an example request and response a developer can copy.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
import yaml
from flask import Flask
from flask.testing import FlaskClient

from cds_service import close_app, create_app
from cds_service.docs import SWAGGER_UI_DIR, docs_bp
from cds_service.spec_check import (
    check_discovery,
    check_feedback,
    check_request,
    check_response,
)
from tests.conftest import make_app

OPENAPI = Path(__file__).resolve().parents[1] / "openapi.yaml"
HTTP_METHODS = ("get", "post", "put", "patch", "delete")
JSON_TYPES = ("application/json",)


def with_docs(app: Flask) -> Flask:
    """Register the docs blueprint if create_app does not yet (the wiring test pins that)."""
    if "docs" not in app.blueprints:
        app.register_blueprint(docs_bp)
    return app


@pytest.fixture
def docs_client(tmp_path: Path) -> Iterator[FlaskClient]:
    app = with_docs(make_app(tmp_path))
    yield app.test_client()
    close_app(app)


class _Page(HTMLParser):
    """Collect the page's script and stylesheet references and any inline script text."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts: list[str] = []
        self.spec_url: str | None = None
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in ("src", "href"):
            if a.get(name) and tag in ("script", "link"):
                self.urls.append(a[name] or "")
        if tag == "script":
            self._in_script = True
        if a.get("id") == "swagger-ui":
            self.spec_url = a.get("data-spec-url")

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline_scripts.append(data)


def parse_page(html: str) -> _Page:
    page = _Page()
    page.feed(html)
    page.close()
    return page


def test_create_app_registers_docs(tmp_path: Path) -> None:
    """create_app wires the docs blueprint, so /docs exists in every deployment."""
    app = create_app(
        {"TESTING": True, "CDS_DATABASE_URL": f"sqlite:///{tmp_path / 'wiring.sqlite3'}"}
    )
    try:
        assert "docs" in app.blueprints
    finally:
        close_app(app)


def test_docs_page_uses_only_local_assets(docs_client: FlaskClient) -> None:
    """Every script and stylesheet comes from this service: no CDN, no inline script (CSP)."""
    response = docs_client.get("/docs")
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    page = parse_page(response.get_data(as_text=True))
    assert page.spec_url == "/openapi.yaml"
    assert page.inline_scripts == []
    assert page.urls, "the page references no assets"
    for url in page.urls:
        assert re.match(r"/[^/]", url), f"{url} is not on this service"
        with docs_client.get(url) as asset:
            assert asset.status_code == 200, url


@pytest.mark.parametrize(
    ("name", "mimetype"),
    [
        pytest.param("swagger-ui-bundle.js", "text/javascript", id="js"),
        pytest.param("swagger-ui.css", "text/css", id="css"),
        pytest.param("favicon-32x32.png", "image/png", id="icon"),
    ],
)
def test_swagger_assets_are_the_packaged_files(
    docs_client: FlaskClient, name: str, mimetype: str
) -> None:
    """Assets are served byte for byte from the installed swagger-ui-bundle, with a cache time."""
    with docs_client.get(f"/docs/swagger-ui/{name}") as response:
        assert response.status_code == 200
        assert response.mimetype == mimetype
        assert response.get_data() == (SWAGGER_UI_DIR / name).read_bytes()
        assert "max-age=3600" in response.headers["Cache-Control"]


@pytest.mark.parametrize(
    "name",
    [
        pytest.param("index.html", id="bundle-index-points-at-petstore"),
        pytest.param("swagger-initializer.js", id="bundle-initializer-points-at-petstore"),
        pytest.param("..%2F__init__.py", id="traversal"),
    ],
)
def test_only_listed_assets_are_served(docs_client: FlaskClient, name: str) -> None:
    """Files of the bundle the page does not use, and path tricks, are 404 (JSON error body)."""
    response = docs_client.get(f"/docs/swagger-ui/{name}")
    assert response.status_code == 404
    assert response.get_json()["error"]["status"] == 404


def test_initializer_never_reaches_the_internet(docs_client: FlaskClient) -> None:
    """Our initializer turns off the validator badge (validator.swagger.io) and names no host."""
    with docs_client.get("/docs/static/swagger-initializer.js") as script:
        assert script.status_code == 200
        text = script.get_data(as_text=True)
    assert "validatorUrl: null" in text
    assert re.search(r"https?://", text) is None
    assert 'getAttribute("data-spec-url")' in text


# --------------------------------------------------------------------------- the contract


def _resolve(node: Any, spec: dict[str, Any]) -> Any:
    """Follow a local $ref (#/components/...) to what it names."""
    while isinstance(node, dict) and "$ref" in node:
        target: Any = spec
        for part in node["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        node = target
    return node


def _examples(media: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    """The example values of one media type, by name (``example`` counts as one)."""
    found = {
        name: _resolve(ex, spec).get("value") for name, ex in (media.get("examples") or {}).items()
    }
    if "example" in media:
        found["example"] = media["example"]
    return {name: value for name, value in found.items() if value is not None}


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in spec["paths"].items():
        for method in HTTP_METHODS:
            if method in item:
                yield path, method, item[method]


@pytest.fixture(scope="module")
def spec() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(OPENAPI.read_text(encoding="utf-8"))
    return loaded


def test_every_operation_has_example_request_and_response(spec: dict[str, Any]) -> None:
    """Each operation shows a developer an example body in and an example success body out."""
    missing = []
    for path, method, operation in _operations(spec):
        body = _resolve(operation.get("requestBody"), spec)
        if body is not None:
            for media_type, media in body["content"].items():
                if not _examples(media, spec):
                    missing.append(f"{method.upper()} {path} request {media_type}")
        success = [code for code in operation["responses"] if str(code).startswith("2")]
        assert success, f"{method.upper()} {path} documents no success response"
        for code in success:
            response = _resolve(operation["responses"][code], spec)
            for media_type, media in (response.get("content") or {}).items():
                if media_type in JSON_TYPES and not _examples(media, spec):
                    missing.append(f"{method.upper()} {path} {code} {media_type}")
    assert missing == []


def _json_examples(node: Any, spec: dict[str, Any]) -> dict[str, Any]:
    return _examples(_resolve(node, spec)["content"]["application/json"], spec)


def test_cds_hooks_examples_keep_the_spec_rules(spec: dict[str, Any]) -> None:
    """Discovery, hook and feedback examples pass the CDS Hooks 2.0 checker (errors only)."""
    call = spec["paths"]["/cds-services/{serviceId}"]["post"]
    documents = {
        "discovery": (
            check_discovery,
            _json_examples(spec["paths"]["/cds-services"]["get"]["responses"]["200"], spec),
        ),
        "hook request": (check_request, _json_examples(call["requestBody"], spec)),
        "hook response": (check_response, _json_examples(call["responses"]["200"], spec)),
        "feedback": (
            check_feedback,
            _json_examples(
                spec["paths"]["/cds-services/{serviceId}/feedback"]["post"]["requestBody"], spec
            ),
        ),
    }
    broken = []
    for kind, (check, examples) in documents.items():
        assert examples, f"no {kind} example"
        broken += [
            f"{kind} example {name!r}: {violation}"
            for name, example in examples.items()
            for violation in check(example)
            if violation.severity == "error"
        ]
    assert broken == []
