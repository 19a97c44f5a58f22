"""The floor: the service's server stack (gunicorn + Flask) doing only the unavoidable work.

It reads the body, parses the JSON exactly as ``cds_service.api.read_json`` does and answers
``{"cards": []}``. Whatever the real service costs above this is its own work.
Run: ``gunicorn 'bench.floor_app:create_app()'``.
"""

from __future__ import annotations

import json

from flask import Flask, Response, jsonify, request


def create_app() -> Flask:
    """Build the floor app: the same routes as the service, no work behind them."""
    app = Flask(__name__)
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.post("/cds-services/<service_id>")
    def call_service(service_id: str) -> tuple[Response, int] | Response:
        body = json.loads(request.get_data(cache=False).decode("utf-8"))
        if not isinstance(body, dict):
            return jsonify({"error": "The JSON body must be an object"}), 400
        return jsonify({"cards": []})

    @app.get("/healthz")
    def health() -> Response:
        return jsonify({"status": "ok"})

    return app
