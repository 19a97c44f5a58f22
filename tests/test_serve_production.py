"""``voclosporin-cds serve --production`` over a real gunicorn, started from another folder.

The installed console script must find the packaged gunicorn settings (2 gthread workers) from
any working directory (issue 13: started elsewhere, gunicorn silently ran one sync worker), and
an over-long header must get the service's JSON 431, not gunicorn's HTML answer.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from cds_service import close_app, create_app
from cds_service.app import GUNICORN_HEADER_FIELD_BYTES, MAX_HEADER_FIELD_BYTES
from tests.support.gunicorn import free_port

SCRIPT = Path(sys.executable).with_name("voclosporin-cds")


@pytest.fixture(scope="module")
def production(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The service as ``serve --production`` runs it, with a folder outside the checkout as cwd."""
    folder = tmp_path_factory.mktemp("elsewhere")
    database = f"sqlite:///{folder / 'cds.sqlite3'}"
    migrated = create_app({"CDS_DATABASE_URL": database, "CDS_AUDIT_HASH_KEY": "k"})
    close_app(migrated)  # migrated once here, so the two workers do not race to create it
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "PYTHONPATH"))}
    env.update(CDS_DATABASE_URL=database, CDS_AUDIT_HASH_KEY="k", CDS_LOG_FORMAT="text")
    port = free_port()
    log = folder / "gunicorn.log"
    with log.open("wb") as errors:
        process = subprocess.Popen(
            [str(SCRIPT), "serve", "--production", "--host", "127.0.0.1", "--port", str(port)],
            cwd=folder,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=errors,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{base}/healthz", timeout=5).status_code == 200:
                    break
            except requests.RequestException:
                pass  # still booting
            if process.poll() is not None or time.monotonic() > give_up:
                pytest.fail(f"serve --production did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.2)
        yield base, log
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_production_start_uses_the_packaged_settings_from_any_folder(
    production: tuple[str, Path],
) -> None:
    """Started outside the checkout, gunicorn runs the packaged 2 gthread workers."""
    _, log = production
    give_up = time.monotonic() + 30
    while log.read_text().count("Booting worker") < 2 and time.monotonic() < give_up:
        time.sleep(0.2)
    text = log.read_text()
    assert "Using worker: gthread" in text, text[-2000:]
    assert text.count("Booting worker") == 2, text[-2000:]


@pytest.mark.parametrize(
    ("size", "status"),
    [
        pytest.param(12_000, 200, id="12-KB-header-over-gunicorn-default"),
        pytest.param(MAX_HEADER_FIELD_BYTES - 100, 200, id="just-under-the-service-limit"),
        pytest.param(MAX_HEADER_FIELD_BYTES + 100, 431, id="just-over-the-service-limit"),
    ],
)
def test_long_headers_get_the_json_error_shape(
    production: tuple[str, Path], size: int, status: int
) -> None:
    """A header over gunicorn's 8 KB default reaches the service; over its limit: JSON 431."""
    base, _ = production
    response = requests.get(f"{base}/healthz", headers={"X-Long": "a" * size}, timeout=10)
    assert response.status_code == status, response.text[:300]
    assert response.headers["Content-Type"].startswith("application/json"), response.text[:300]
    if status == 431:
        assert response.json()["error"]["status"] == 431
        assert "X-Long" in response.json()["error"]["detail"]


def test_a_long_bearer_token_gets_json_not_html(production: tuple[str, Path]) -> None:
    """A 10 KB bearer token (over gunicorn's 8 KB default) gets a JSON answer from the service."""
    base, _ = production
    response = requests.post(
        f"{base}/cds-services/voclosporin-orders",
        headers={"Authorization": "Bearer " + "a" * 10_000},
        json={},
        timeout=10,
    )
    assert response.status_code == 400  # authentication is off here: the empty body is the fault
    assert response.json()["error"]["status"] == 400


def test_headers_over_gunicorns_raised_limit_are_still_bounded(
    production: tuple[str, Path],
) -> None:
    """Over GUNICORN_HEADER_FIELD_BYTES gunicorn itself refuses (the documented outer bound)."""
    base, _ = production
    response = requests.get(
        f"{base}/healthz", headers={"X-Long": "a" * (GUNICORN_HEADER_FIELD_BYTES + 10)}, timeout=10
    )
    assert response.status_code in (400, 431)
