"""Interactive API docs at ``/docs``: Swagger UI served from the swagger-ui-bundle package.

Everything the page needs comes from this service (hospital networks often have no internet):
the Swagger UI assets from the installed ``swagger_ui_bundle`` package, our initializer from
``static/docs/``, and the contract from ``/openapi.yaml``. The page has no inline script, so a
strict Content-Security-Policy (``script-src 'self'``) does not break it.
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, abort, render_template_string, send_from_directory, url_for
from swagger_ui_bundle import swagger_ui_path

SWAGGER_UI_DIR = Path(str(swagger_ui_path))
# Only what the page loads; the bundle's own index.html points at petstore.swagger.io.
SWAGGER_UI_ASSETS = frozenset(
    {"swagger-ui.css", "swagger-ui-bundle.js", "favicon-32x32.png", "favicon-16x16.png"}
)
ASSET_MAX_AGE_S = 3600

docs_bp = Blueprint(
    "docs",
    __name__,
    static_folder="static/docs",
    static_url_path="/docs/static",
)

_PAGE = """<!DOCTYPE html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>Voclosporin CDS Hooks service: API</title>
    <link rel="stylesheet" href="{{ asset('swagger-ui.css') }}">
    <link rel="icon" type="image/png" href="{{ asset('favicon-32x32.png') }}" sizes="32x32">
    <link rel="icon" type="image/png" href="{{ asset('favicon-16x16.png') }}" sizes="16x16">
  </head>
  <body>
    <noscript>This page needs JavaScript. The contract itself is at
      <a href="{{ spec_url }}">{{ spec_url }}</a>.</noscript>
    <div id="swagger-ui" data-spec-url="{{ spec_url }}"></div>
    <script src="{{ asset('swagger-ui-bundle.js') }}" charset="utf-8"></script>
    <script src="{{ initializer }}" charset="utf-8"></script>
  </body>
</html>
"""


@docs_bp.get("/docs")
def docs_page() -> str:
    return render_template_string(
        _PAGE,
        asset=lambda name: url_for("docs.swagger_ui_asset", filename=name),
        spec_url=url_for("cds.openapi"),
        initializer=url_for("docs.static", filename="swagger-initializer.js"),
    )


@docs_bp.get("/docs/swagger-ui/<filename>")
def swagger_ui_asset(filename: str) -> Response:
    if filename not in SWAGGER_UI_ASSETS:
        abort(404)
    return send_from_directory(SWAGGER_UI_DIR, filename, max_age=ASSET_MAX_AGE_S)
