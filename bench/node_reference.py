"""``python -m bench.node_reference DIR``: throughput of the CDS Hooks reference sample services
(Node/Express, github.com/cds-hooks/sandbox-cds-services) on this machine, for scale only.

``DIR`` is a checkout with ``npm install --omit=dev`` done (its lockfile pins
``fs@0.0.1-security``, which the registry no longer serves: add ``"overrides": {"fs":
"file:./empty-fs", "antlr4": "4.8.0"}`` with an empty package there and drop the lockfile;
without the lockfile antlr4 must be pinned for fhirpath 0.17). The Node server runs
as one process (one core); its patient-greeting service answers one trivial card from the
prefetched Patient. Beside it, the service here on one sync worker answers the small
order-sign (bench.ratios). Both at concurrency 4 over keep-alive loopback, CPU from /proc.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import date
from pathlib import Path
from typing import Any

from bench.payloads import encode, small_request, vary_template
from bench.ratios import ONE_SYNC_WORKER, SERVICE_APP
from bench.servers import REPO_ROOT, Gunicorn

REQUESTS = 3_000
CONCURRENCY = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cpu(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _load(port: int, path: str, body: Path, vary: bool) -> dict[str, Any]:
    command = [
        sys.executable, "-m", "bench.loadgen", "--port", str(port), "--path", path,
        "--body", str(body), "--concurrency", str(CONCURRENCY), "--requests", str(REQUESTS),
        "--warmup", "200", "--max-seconds", "120",
    ]  # fmt: skip
    if vary:
        command += ["--vary-from", "1"]
    done = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, check=True)
    result: dict[str, Any] = json.loads(done.stdout)
    if result["ok"] != result["requests"]:
        raise RuntimeError(f"{path}: not every answer was 200: {result['statuses']}")
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    directory = Path(args[0])
    rows = []
    with tempfile.TemporaryDirectory(prefix="cds-bench-node-") as tmp:
        greeting = Path(tmp) / "greeting.json"
        greeting.write_text(
            json.dumps(
                {
                    "hook": "patient-view",
                    "hookInstance": str(uuid.uuid4()),
                    "context": {"patientId": "p1", "userId": "Practitioner/1"},
                    "prefetch": {
                        "patient": {
                            "resourceType": "Patient",
                            "id": "p1",
                            "name": [{"given": ["Ada"]}],
                        }
                    },
                }
            )
        )
        port = _free_port()
        node = subprocess.Popen(
            ["node", "server.js"],
            cwd=directory,
            env={**os.environ, "PORT": str(port)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(1.5)
            before = _cpu(node.pid)
            result = _load(port, "/cds-services/patient-greeting", greeting, vary=False)
            cpu = (_cpu(node.pid) - before) * 1000 / (REQUESTS + 200)
            rows.append(("Node reference, patient-greeting (1 process)", result, cpu))
        finally:
            node.terminate()
            node.wait(10)
        small = Path(tmp) / "small.json"
        small.write_bytes(vary_template(encode(small_request(date.today()))))
        with Gunicorn(SERVICE_APP, ONE_SYNC_WORKER) as service:
            pids = service.worker_pids()
            before = sum(_cpu(p) for p in pids)
            result = _load(service.port, "/cds-services/voclosporin-order-sign", small, vary=True)
            cpu = (sum(_cpu(p) for p in pids) - before) * 1000 / (REQUESTS + 200)
            rows.append(("this service, small order-sign (1 sync worker)", result, cpu))
    print("| server | req/s | p50 ms | CPU ms/req |")
    print("|---|---|---|---|")
    for label, result, cpu in rows:
        print(f"| {label} | {result['throughput_rps']:.0f} | {result['p50_ms']:.2f} | {cpu:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
