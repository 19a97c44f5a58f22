"""Two instances behind a real load balancer, as production runs the service (issue 13).

Two gunicorn instances (the packaged config: 2 gthread workers each) share one PostgreSQL schema
and Redis, with client authentication on, behind Debian's haproxy (round robin, ``/readyz``
checks). What the test pins: feedback right after a hook call is never refused whichever
instance takes it; a JWT used on one instance is refused on the other; a stalled database
(a table lock held by another connection) leaves hook calls answered in bounded time and loses
no record; an instance killed (SIGKILL) or stopped (SIGTERM) under load loses nothing that was
answered 200; SIGTERM during a stall says at ERROR what stays in the spool, and the next start
writes it. The module shares one cluster (about 60 s in all on the 2-core dev machine).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import Any

import jwt
import psycopg
import pytest
import redis
import requests
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm
from sqlalchemy.engine import URL

from cds_service import close_app
from cds_service.storage import Storage
from tests.charts.lupus import CHARTS, voclosporin_draft_order
from tests.conftest import make_app
from tests.support.ci import skip_or_fail
from tests.support.gunicorn import free_port
from tests.support.haproxy import haproxy_binary, load_balancer  # noqa: F401  (fixture)
from tests.support.hooks import chart_resources, hook_request, prefetch_for

pytest_plugins = ["tests.support.databases"]
pytestmark = pytest.mark.postgres

ROOT = Path(__file__).resolve().parents[1]
ISSUER = "https://ehr.multi-instance.test"
SIGN = "/cds-services/voclosporin-order-sign"
TODAY = date(2026, 11, 1)
REDIS_URL = os.environ.get("CDS_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


@dataclass
class Instance:
    """One gunicorn instance (master + workers in their own process group)."""

    name: str
    port: int
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the instance with the packaged production config."""
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [
                    str(Path(sys.executable).with_name("gunicorn")),
                    *("-c", "python:cds_service.gunicorn_conf"),
                    *("-b", f"127.0.0.1:{self.port}", "--graceful-timeout", "15"),
                    "cds_service:create_app()",
                ],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=out,
                cwd=ROOT,
                start_new_session=True,  # its own process group: SIGKILL takes the workers too
            )

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until /readyz answers 200."""
        give_up = time.monotonic() + timeout
        while True:
            try:
                if requests.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            assert self.process is not None
            if self.process.poll() is not None or time.monotonic() > give_up:
                pytest.fail(f"instance {self.name} did not start:\n{self.log.read_text()[-3000:]}")
            time.sleep(0.2)

    def kill(self) -> None:
        """SIGKILL master and workers at once (a crashed machine)."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(10)

    def terminate(self) -> int:
        """SIGTERM to the master (an orderly stop); return its exit status."""
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(30)

    def stop(self) -> None:
        """Stop whatever still runs (teardown)."""
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()


@dataclass
class Cluster:
    """Two instances, the load balancer in front, the shared database, the client's key."""

    instances: list[Instance]
    balancer: str
    database: str  # a psycopg conninfo with the test schema's search_path
    key: ec.EllipticCurvePrivateKey
    body: dict[str, Any]
    public_url: str
    answered: list[str] = field(default_factory=list)

    def token(self, path: str) -> str:
        """A fresh client JWT for ``path`` (ES256, five minutes)."""
        now = int(time.time())
        claims = {
            "iss": ISSUER,
            "sub": "multi-instance-client",
            "aud": self.public_url + path,
            "iat": now,
            "exp": now + 300,
            "jti": str(uuid.uuid4()),
        }
        return jwt.encode(claims, self.key, algorithm="ES256", headers={"kid": "mi-1"})

    def post(
        self, base: str, path: str, body: dict[str, Any], token: str | None = None
    ) -> requests.Response:
        """POST on a fresh connection, so the balancer may pick either instance."""
        headers = {"Authorization": f"Bearer {token or self.token(path)}", "Connection": "close"}
        return requests.post(base + path, json=body, headers=headers, timeout=20)

    def hook_call(self, base: str) -> requests.Response:
        """One order-sign call with a new hookInstance."""
        return self.post(base, SIGN, {**self.body, "hookInstance": str(uuid.uuid4())})

    def feedback(self, base: str, card_uuid: str) -> requests.Response:
        """One "overridden" feedback on ``card_uuid``."""
        item = {"card": card_uuid, "outcome": "overridden", "outcomeTimestamp": _now_iso()}
        return self.post(base, f"{SIGN}/feedback", {"feedback": [item]})

    def stored_hook_instances(self) -> set[str]:
        """The hookInstances the shared database holds."""
        with psycopg.connect(self.database) as conn:
            return {row[0] for row in conn.execute("SELECT hook_instance FROM cds_hook_call")}


def _now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _hook_body(tmp_path: Path) -> dict[str, Any]:
    """An order-sign request that fires cards, prefetch built from the service's templates."""
    app = make_app(tmp_path)
    try:
        templates = app.extensions["cds_service"].services["voclosporin-order-sign"].prefetch
    finally:
        close_app(app)
    resources = chart_resources(CHARTS["ln-on-voclosporin-interactions"](TODAY))
    patient_id = next(r["id"] for r in resources if r["resourceType"] == "Patient")
    return hook_request(
        "order-sign",
        patient_id,
        [voclosporin_draft_order(patient_id, TODAY)],
        prefetch_for(resources, patient_id, templates),
    )


@pytest.fixture(scope="module")
def shared_database(postgres_server: URL) -> Iterator[tuple[str, str]]:
    """A migrated PostgreSQL schema for both instances: (SQLAlchemy URL, psycopg conninfo)."""
    schema = f"cds_multi_{uuid.uuid4().hex[:10]}"
    admin = postgres_server.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE SCHEMA "{schema}"')
    scoped = postgres_server.update_query_dict({"options": f"-csearch_path={schema}"})
    url = scoped.render_as_string(hide_password=False)
    storage = Storage(url)
    storage.migrate()  # once, before the rollout (docs/operating.md)
    storage.dispose()
    try:
        yield url, scoped.set(drivername="postgresql").render_as_string(hide_password=False)
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f'DROP SCHEMA "{schema}" CASCADE')


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory,
    haproxy_binary: str,  # noqa: F811  (the fixture imported above)
    shared_database: tuple[str, str],
) -> Iterator[Cluster]:
    """Start two instances and haproxy; stop them all afterwards."""
    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=2).ping()
    except redis.RedisError as exc:
        skip_or_fail(f"no Redis at {REDIS_URL}: {exc}")
    directory = tmp_path_factory.mktemp("multi-instance")
    key = ec.generate_private_key(ec.SECP256R1())
    jwk = {**ECAlgorithm.to_jwk(key.public_key(), as_dict=True), "kid": "mi-1", "alg": "ES256"}
    (directory / "jwks.json").write_text(json.dumps({"keys": [jwk]}))
    lb_port = free_port()
    public_url = f"http://127.0.0.1:{lb_port}"
    url, conninfo = shared_database
    settings = {
        "CDS_DATABASE_URL": url,
        "CDS_REDIS_URL": REDIS_URL,
        "CDS_JWT_ISSUERS": json.dumps({ISSUER: f"file:{directory / 'jwks.json'}"}),
        "CDS_PUBLIC_BASE_URL": public_url,
        "CDS_FHIR_ALLOWED_SERVERS": "https://ehr.multi-instance.test/fhir",
        "CDS_AUDIT_HASH_KEY": "multi-instance-key",
        "CDS_AUDIT_WRITE_TIMEOUT_MS": "300",
        "CDS_DB_LOCK_TIMEOUT_MS": "1000",
        "CDS_AUDIT_DRAIN_SECONDS": "2",
        "CDS_LOG_FORMAT": "text",
    }
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("CDS_")}
    instances = []
    for name in ("a", "b"):
        env = {**base_env, **settings, "CDS_AUDIT_SPOOL_DIR": str(directory / name / "spool")}
        (directory / name).mkdir()
        instances.append(Instance(name, free_port(), env, directory / name / "gunicorn.log"))
    try:
        for instance in instances:
            instance.start()
        for instance in instances:
            instance.wait_ready()
        with load_balancer(
            haproxy_binary, directory, lb_port, [i.port for i in instances]
        ) as balancer:
            yield Cluster(instances, balancer, conninfo, key, _hook_body(directory), public_url)
    finally:
        for instance in instances:
            instance.stop()


def test_instances_agree_on_the_settings_fingerprint(cluster: Cluster) -> None:
    """Both instances show the same fingerprint on /healthz and are ready on /readyz."""
    prints = {
        requests.get(f"{i.url}/healthz", timeout=5).json()["settingsFingerprint"]
        for i in cluster.instances
    }
    assert len(prints) == 1
    assert all(
        requests.get(f"{i.url}/readyz", timeout=5).status_code == 200 for i in cluster.instances
    )


def test_feedback_right_after_hook_calls_is_never_refused(cluster: Cluster) -> None:
    """Feedback posted the moment a card is answered is stored, on the other instance too."""
    a, b = (instance.url for instance in cluster.instances)
    routes = [(a, b), (b, a), (cluster.balancer, cluster.balancer)] * 12

    def round_trip(route: tuple[str, str]) -> int:
        issuing, taking = route
        answer = cluster.hook_call(issuing)
        assert answer.status_code == 200, answer.text
        return cluster.feedback(taking, answer.json()["cards"][0]["uuid"]).status_code

    with ThreadPoolExecutor(max_workers=4) as pool:
        statuses = list(pool.map(round_trip, routes))
    assert [s for s in statuses if s != 200] == []


def test_a_jwt_used_on_one_instance_is_refused_on_the_other(cluster: Cluster) -> None:
    """The replay cache is shared: the same token on the second instance is a 401."""
    a, b = cluster.instances
    token = cluster.token(SIGN)
    body = {**cluster.body, "hookInstance": str(uuid.uuid4())}
    assert cluster.post(a.url, SIGN, body, token).status_code == 200
    assert cluster.post(b.url, SIGN, body, token).status_code == 401


def test_a_stalled_database_leaves_hook_calls_answered_in_bounded_time(cluster: Cluster) -> None:
    """With the card table locked by another connection, calls answer within 3 s each and
    every record reaches the database once the lock goes; feedback then works."""
    with psycopg.connect(cluster.database) as lock:
        lock.execute("LOCK TABLE cds_issued_card IN ACCESS EXCLUSIVE MODE")

        def timed_call(_: int) -> tuple[float, requests.Response]:
            started = time.monotonic()
            answer = cluster.hook_call(cluster.balancer)
            return time.monotonic() - started, answer

        with ThreadPoolExecutor(max_workers=4) as pool:
            results = list(pool.map(timed_call, range(8)))
        lock.rollback()
    assert [a.status_code for _, a in results] == [200] * 8
    assert max(elapsed for elapsed, _ in results) < 3.0
    hook_instances = {_hook_instance(answer) for _, answer in results}
    give_up = time.monotonic() + 20
    while not hook_instances <= cluster.stored_hook_instances():
        assert time.monotonic() < give_up, "spooled records were not replayed"
        time.sleep(0.5)
    for _, answer in results:
        status = cluster.feedback(cluster.balancer, answer.json()["cards"][0]["uuid"]).status_code
        assert status == 200


def _hook_instance(answer: requests.Response) -> str:
    """The hookInstance the request of ``answer`` carried."""
    body = answer.request.body
    assert isinstance(body, bytes)
    value: str = json.loads(body)["hookInstance"]
    return value


def test_an_instance_killed_or_stopped_under_load_loses_nothing_answered(
    cluster: Cluster,
) -> None:
    """SIGKILL one instance and later SIGTERM the other under load: every call answered 200 is
    in the database, and the stopped instance exits cleanly."""
    a, b = cluster.instances
    answered: list[str] = []
    failed: list[int] = []
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            hook_instance = str(uuid.uuid4())
            try:
                answer = cluster.post(
                    cluster.balancer, SIGN, {**cluster.body, "hookInstance": hook_instance}
                )
            except requests.RequestException:
                failed.append(0)
                continue
            if answer.status_code == 200:
                answered.append(hook_instance)
            else:
                failed.append(answer.status_code)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(1.5)
        a.kill()
        time.sleep(1.5)
        before_restart = len(answered)
        a.start()
        a.wait_ready()
        time.sleep(1.0)
        assert b.terminate() == 0
        time.sleep(1.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    assert before_restart > 0
    assert len(answered) > before_restart
    give_up = time.monotonic() + 20
    while missing := set(answered) - cluster.stored_hook_instances():
        assert time.monotonic() < give_up, f"{len(missing)} answered calls not in the database"
        time.sleep(0.5)
    assert "AUDIT RECORD" not in b.log.read_text()
    b.start()  # leave the cluster whole for the next test
    b.wait_ready()


def test_sigterm_during_a_database_stall_spools_and_says_so(cluster: Cluster) -> None:
    """SIGTERM while the database is stalled: the instance exits 0 saying at ERROR how many
    records stay in its spool, and its next start writes every one of them."""
    _, b = cluster.instances
    log_before = len(b.log.read_text())
    with psycopg.connect(cluster.database) as lock:
        lock.execute("LOCK TABLE cds_issued_card IN ACCESS EXCLUSIVE MODE")
        answers = [cluster.hook_call(b.url) for _ in range(6)]
        assert [a.status_code for a in answers] == [200] * 6
        assert b.terminate() == 0
        lock.rollback()
    said = b.log.read_text()[log_before:]
    assert "AUDIT RECORDS NOT WRITTEN at shutdown" in said
    b.start()
    b.wait_ready()
    wanted = {_hook_instance(answer) for answer in answers}
    give_up = time.monotonic() + 20
    while missing := wanted - cluster.stored_hook_instances():
        assert time.monotonic() < give_up, f"{len(missing)} spooled records never written"
        time.sleep(0.5)
