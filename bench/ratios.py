"""``python -m bench.ratios``: CPU per request of the service against the floor (issue 14).

The headline of the benchmark. The floor (``bench.floor_app``) and the service run side by side
on the same worker class, one sync worker each; for each body (the small order-sign, 100
Observations + 100 MedicationRequests, 1,000 + 100) several rounds alternate floor and service,
and the medians of the workers' CPU (user + system) per request are compared. Every request
carries new resource ids, patient id and hookInstance (``bench.payloads.vary_template``), so no
cache keyed by content or id can stand in for work.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from bench.payloads import encode, prefetch_request, small_request, vary_template
from bench.servers import REPO_ROOT, Gunicorn, WorkerSettings

SERVICE_APP = "cds_service:create_app()"
FLOOR_APP = "bench.floor_app:create_app()"
HOOK_PATH = "/cds-services/voclosporin-order-sign"
ONE_SYNC_WORKER = WorkerSettings(workers=1, worker_class="sync")
ROUNDS = 5
# (label, Observations or None for the small chart, requests per round, target ratio)
BODIES: tuple[tuple[str, int | None, int, float], ...] = (
    ("small (10 resources, 8 KB)", None, 300, 3.0),
    ("100 Obs + 100 MedReq", 100, 150, 2.0),
    ("1,000 Obs + 100 MedReq", 1_000, 40, 1.5),
)


@dataclass
class Ratio:
    label: str
    kib: float
    floor_ms: list[float]
    service_ms: list[float]
    target: float

    @property
    def ratio(self) -> float:
        return statistics.median(self.service_ms) / statistics.median(self.floor_ms)

    def row(self) -> list[str]:
        verdict = "PASS" if self.ratio <= self.target else "**MISS**"
        return [
            self.label,
            f"{self.kib:,.0f}",
            f"{statistics.median(self.floor_ms):.2f}",
            f"{statistics.median(self.service_ms):.2f}",
            f"{self.ratio:.2f}x",
            f"<= {self.target:g}x",
            verdict,
        ]


HEADER = ["body", "KiB", "floor CPU ms/req", "service CPU ms/req", "ratio", "target", ""]


def _cpu_seconds(pids: Sequence[int]) -> float:
    from bench.run import cpu_seconds

    return cpu_seconds(pids)


class _Driver:
    """Posts varied bodies; request numbers never repeat across loads of one run."""

    def __init__(self) -> None:
        self.next_number = 1

    def load(self, server: Gunicorn, template: Path, requests: int) -> float:
        """CPU ms per request of ``server``'s workers over ``requests`` new-id requests."""
        pids = server.worker_pids()
        before = _cpu_seconds(pids)
        completed = subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.loadgen",
                "--port",
                str(server.port),
                "--path",
                HOOK_PATH,
                "--body",
                str(template),
                "--requests",
                str(requests),
                "--max-seconds",
                "300",
                "--vary-from",
                str(self.next_number),
            ],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=420,
            check=False,
        )
        self.next_number += requests + 1
        if completed.returncode != 0:
            raise RuntimeError(f"load generator failed:\n{completed.stderr[-4000:]}")
        import json

        result: dict[str, Any] = json.loads(completed.stdout)
        if result["ok"] != result["requests"]:
            raise RuntimeError(f"not every answer was 200: {result['statuses']}")
        return float((_cpu_seconds(pids) - before) * 1000 / max(result["requests"], 1))


def measure(rounds: int = ROUNDS, scale: float = 1.0) -> list[Ratio]:
    """Alternate floor and service, ``rounds`` times per body; return the ratios."""
    today = date.today()
    driver = _Driver()
    results = []
    with (
        tempfile.TemporaryDirectory(prefix="cds-bench-ratio-") as tmp,
        Gunicorn(FLOOR_APP, ONE_SYNC_WORKER) as floor,
        Gunicorn(SERVICE_APP, ONE_SYNC_WORKER) as service,
    ):
        for label, observations, requests, target in BODIES:
            body = (
                small_request(today)
                if observations is None
                else prefetch_request(observations, today)
            )
            raw = encode(body)
            template = Path(tmp) / "template.json"
            template.write_bytes(vary_template(raw))
            count = max(2, int(requests * scale))
            driver.load(floor, template, max(2, count // 5))  # warm-up
            driver.load(service, template, max(2, count // 5))
            ratio = Ratio(label, len(raw) / 1024, [], [], target)
            for _ in range(rounds):
                ratio.floor_ms.append(driver.load(floor, template, count))
                ratio.service_ms.append(driver.load(service, template, count))
            results.append(ratio)
    return results


def table(ratios: Sequence[Ratio]) -> list[str]:
    """The ratios as Markdown table lines."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r.row()) + " |" for r in ratios]
    return lines


def main(argv: list[str] | None = None) -> int:
    quick = "--quick" in (argv if argv is not None else sys.argv[1:])
    ratios = measure(rounds=1 if quick else ROUNDS, scale=0.05 if quick else 1.0)
    print("\n".join(table(ratios)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
