"""Run every benchmark of the service as deployed (gunicorn on loopback), print the tables and
keep them in bench/RESULTS.md.

Sections (issue 5): the floor (same stack, no work) vs the service at concurrency 1 and 8; cost
growth with the size of the prefetch; the fetch path against sekmet-fhir; worker RSS over 10,000
requests; and the two gunicorn worker models side by side. Each load runs in its own process
(``bench.loadgen``), bounded in requests and seconds; every server started here is stopped here.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

from bench import ratios, stages
from bench.fetch_path import (
    DUMMY_TOKEN,
    ReplayFhirServer,
    hook_calls_from_log,
    record,
    service_queries,
    time_queries,
)
from bench.payloads import (
    PATIENT_ID,
    SERVICE_ID,
    chart_bundle,
    count_prefetched,
    encode,
    order_sign_request,
    prefetch_request,
    vary_template,
)
from bench.servers import REPO_ROOT, Gunicorn, WorkerSettings, memory_kib
from tests.charts.lupus import CHARTS
from tests.support.fhir_server import FhirServer
from tests.support.hooks import chart_resources

Resource = dict[str, Any]
RESULTS_PATH = Path(__file__).with_name("RESULTS.md")
SERVICE_APP = "cds_service:create_app()"
FLOOR_APP = "bench.floor_app:create_app()"
HOOK_PATH = f"/cds-services/{SERVICE_ID}"

# The production setting this benchmark argues for (see README "Worker settings").
CHOSEN = WorkerSettings(workers=2, worker_class="gthread", threads=4)
ALTERNATIVE = WorkerSettings(workers=2, worker_class="sync")

TYPICAL_OBSERVATIONS = 100
GROWTH_OBSERVATIONS = (10, 100, 1_000, 5_000)
FETCH_CHART = "ln-renewal-egfr-25pct"
SEKMET = "sekmet-fhir"
REPLAY = "replay, 50 ms"
REPLAY_DELAY_S = 0.050
MEMORY_REQUESTS = 10_000
MEMORY_CHECKPOINTS = 4
MIB = 1024.0

# Targets from the issue.
FLOOR_P50_RATIO_MAX = 2.0
FLOOR_THROUGHPUT_RATIO_MIN = 0.5
P50_AT_1000_MAX_MS = 50.0
FETCH_RATIO_MAX = 1.3
LEAK_MAX_MIB = 4.0  # per worker over the last 3/4 of the memory run: ~0.5 KiB a request


@dataclass(frozen=True)
class Budget:
    """How much one load may take: measured requests, unmeasured warm-up, wall-clock cap."""

    requests: int
    warmup: int
    max_seconds: float


@dataclass(frozen=True)
class Quick:
    """Sizes for the smoke test: every code path, tiny counts."""

    enabled: bool = False

    def budget(self, full: Budget) -> Budget:
        if not self.enabled:
            return full
        return Budget(min(full.requests, 5), min(full.warmup, 2), min(full.max_seconds, 10))


@dataclass
class Run:
    """One load's summary from the load generator plus the workers' CPU time per request."""

    label: str
    result: dict[str, Any]
    cpu_ms_per_request: float

    @property
    def p50(self) -> float:
        return float(self.result["p50_ms"])

    @property
    def p99(self) -> float:
        return float(self.result["p99_ms"])

    @property
    def rps(self) -> float:
        return float(self.result["throughput_rps"])


@dataclass
class Report:
    lines: list[str] = field(default_factory=list)

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)
        for line in lines:
            print(line, flush=True)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        self.add("| " + " | ".join(header) + " |", "|" + "---|" * len(header))
        for row in rows:
            self.add("| " + " | ".join(_cell(v) for v in row) + " |")
        self.add("")


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:.2f}"
    return str(value)


def verdict(ok: bool) -> str:
    return "PASS" if ok else "**MISS**"


# ---------------------------------------------------------------------------------------------
# Processes


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the given processes (all their threads), in seconds."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def load_once(
    port: int,
    body: Path,
    concurrency: int,
    budget: Budget,
    warmup: bool,
    vary_from: int | None = None,
) -> dict[str, Any]:
    """One load; ``vary_from``: ``body`` is a ``vary_template`` (new ids on every request)."""
    count = budget.warmup if warmup else budget.requests
    vary = [] if vary_from is None else ["--vary-from", str(vary_from)]
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.loadgen",
            "--port",
            str(port),
            "--path",
            HOOK_PATH,
            "--body",
            str(body),
            "--concurrency",
            str(concurrency),
            "--requests",
            str(count),
            "--max-seconds",
            str(budget.max_seconds),
            *vary,
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=budget.max_seconds + 120,
        check=False,
    )
    if completed.returncode != 0:
        raise RuntimeError(f"load generator failed:\n{completed.stderr[-4000:]}")
    result: dict[str, Any] = json.loads(completed.stdout)
    return result


def drive(
    server: Gunicorn,
    body: Path,
    concurrency: int,
    budget: Budget,
    label: str,
    vary_from: int | None = None,
) -> Run:
    """Warm up, then measure one load; the workers' CPU counts only the measured part."""
    if budget.warmup:
        load_once(server.port, body, concurrency, budget, warmup=True, vary_from=vary_from)
    pids = server.worker_pids()
    cpu_before = cpu_seconds(pids)
    measured_from = None if vary_from is None else vary_from + budget.warmup + 1
    result = load_once(
        server.port, body, concurrency, budget, warmup=False, vary_from=measured_from
    )
    cpu_used = cpu_seconds(pids) - cpu_before
    if result["ok"] != result["requests"]:
        raise RuntimeError(
            f"{label}: not every answer was 200: {result['statuses']}\n{server.log_text(4000)}"
        )
    return Run(label, result, cpu_used * 1000 / max(result["requests"], 1))


# ---------------------------------------------------------------------------------------------
# Sections


@dataclass
class Bodies:
    directory: Path
    today: date

    def write(self, name: str, body: dict[str, Any]) -> Path:
        path = self.directory / f"{name}.json"
        path.write_bytes(encode(body))
        return path


def floor_vs_service(
    report: Report, floor: Gunicorn, service: Gunicorn, body: Path, quick: Quick
) -> dict[int, tuple[Run, Run]]:
    """p50 / p99 / throughput of the service as multiples of the floor, at concurrency 1 and 8."""
    runs: dict[int, tuple[Run, Run]] = {}
    for concurrency in (1, 8):
        floor_budget = quick.budget(Budget(2_000 if concurrency == 8 else 1_000, 200, 10))
        service_budget = quick.budget(Budget(600 if concurrency == 8 else 300, 30, 20))
        floor_run = drive(floor, body, concurrency, floor_budget, f"floor c={concurrency}")
        service_run = drive(service, body, concurrency, service_budget, f"service c={concurrency}")
        runs[concurrency] = (floor_run, service_run)
    rows = []
    for concurrency, (f, s) in runs.items():
        rows.append(
            [
                concurrency,
                f.p50,
                s.p50,
                f"{s.p50 / f.p50:.1f}x",
                verdict(s.p50 / f.p50 <= FLOOR_P50_RATIO_MAX),
                f.p99,
                s.p99,
                f"{s.p99 / f.p99:.1f}x",
                f.rps,
                s.rps,
                f"{s.rps / f.rps:.2f}x",
                verdict(s.rps / f.rps >= FLOOR_THROUGHPUT_RATIO_MIN),
                f.cpu_ms_per_request,
                s.cpu_ms_per_request,
            ]
        )
    report.table(
        [
            "conc.",
            "floor p50 ms",
            "service p50 ms",
            "p50 ratio",
            "target <= 2x",
            "floor p99 ms",
            "service p99 ms",
            "p99 ratio",
            "floor req/s",
            "service req/s",
            "throughput ratio",
            "target >= 0.5x",
            "floor CPU ms/req",
            "service CPU ms/req",
        ],
        rows,
    )
    return runs


def cost_growth(
    report: Report, floor: Gunicorn, service: Gunicorn, bodies: Bodies, quick: Quick
) -> list[Run]:
    """p50 against the number of prefetched Observations (100 MedicationRequests throughout),
    next to the floor parsing the same body."""
    sizes = GROWTH_OBSERVATIONS[:2] if quick.enabled else GROWTH_OBSERVATIONS
    runs: list[Run] = []
    rows = []
    for n in sizes:
        body = prefetch_request(n, bodies.today)
        counts = count_prefetched(body)
        path = bodies.write(f"growth-{n}", body)
        floor_run = drive(floor, path, 1, quick.budget(Budget(100, 3, 8)), f"floor {n}")
        run = drive(service, path, 1, quick.budget(Budget(200, 3, 15)), f"{n} Observations")
        runs.append(run)
        target = verdict(run.p50 < P50_AT_1000_MAX_MS) if n == 1_000 else ""
        rows.append(
            [
                f"{counts.get('Observation', 0):,}",
                counts.get("MedicationRequest", 0),
                f"{path.stat().st_size / 1024:,.0f}",
                run.result["requests"],
                run.p50,
                run.p99,
                run.cpu_ms_per_request,
                target,
                floor_run.p50,
                floor_run.cpu_ms_per_request,
                run.cpu_ms_per_request - floor_run.cpu_ms_per_request,
            ]
        )
    report.table(
        [
            "Observations",
            "MedicationRequests",
            "body KiB",
            "requests",
            "p50 ms",
            "p99 ms",
            "CPU ms/req",
            "target p50 < 50 ms at 1,000",
            "floor p50 ms",
            "floor CPU ms/req",
            "service minus floor, CPU ms/req",
        ],
        rows,
    )
    xs, p50s = [float(n) for n in sizes], [r.p50 for r in runs]
    intercept, slope = linear_fit(xs, p50s)
    report.add(
        f"Least-squares line through the p50s: **{intercept:.1f} ms + {slope * 1000:.1f} ms per "
        f"1,000 Observations** (R² {r_squared(xs, p50s, intercept, slope):.3f}).",
        "",
    )
    return runs


def linear_fit(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Ordinary least squares ``y = a + b x``; returns (a, b)."""
    n = len(xs)
    mean_x, mean_y = sum(xs) / n, sum(ys) / n
    var = sum((x - mean_x) ** 2 for x in xs)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var
    return mean_y - slope * mean_x, slope


def r_squared(xs: Sequence[float], ys: Sequence[float], a: float, b: float) -> float:
    mean_y = sum(ys) / len(ys)
    total = sum((y - mean_y) ** 2 for y in ys)
    residual = sum((y - (a + b * x)) ** 2 for x, y in zip(xs, ys, strict=True))
    return 1 - residual / total if total else 1.0


def fetch_path(
    report: Report,
    fhir_servers: dict[str, str],
    charts: dict[str, Resource],
    services: dict[str, Gunicorn],
    bodies: Bodies,
    quick: Quick,
) -> None:
    """Hook latency with no prefetch vs the slowest single FHIR query and vs their sum."""
    repeats = 3 if quick.enabled else 15
    chosen = services[CHOSEN.label()]
    summary_rows = []
    prefetched_p50: dict[str, float] = {}
    for server_label, base_url in fhir_servers.items():
        for patient_id, bundle in charts.items():
            queries = service_queries(patient_id)
            timings, concurrent_ms = time_queries(base_url, queries, repeats)
            request = order_sign_request(
                patient_id, bodies.today, fhir_server=base_url, token=DUMMY_TOKEN
            )
            path = bodies.write(f"fetch-{_slug(server_label)}-{patient_id}", request)
            run = drive(chosen, path, 1, quick.budget(Budget(30, 3, 20)), f"fetch {patient_id}")
            if patient_id not in prefetched_p50:
                # The same chart sent as prefetch: what the call costs without any fetching.
                prefetched = bodies.write(
                    f"prefetched-{patient_id}",
                    order_sign_request(patient_id, bodies.today, chart_resources(bundle)),
                )
                prefetched_p50[patient_id] = drive(
                    chosen, prefetched, 1, quick.budget(Budget(30, 3, 20)), "prefetched"
                ).p50
            local = prefetched_p50[patient_id]
            slowest = max(timings, key=lambda t: t.p50_ms)
            total = sum(t.p50_ms for t in timings)
            fetching = run.p50 - local
            if server_label == SEKMET:
                report.add(
                    f"Chart `{patient_id}` ({len(chart_resources(bundle))} resources) on "
                    f"sekmet-fhir; each query alone, median of {repeats}:",
                    "",
                )
                report.table(
                    ["prefetch key", "query", "resources", "pages", "p50 ms"],
                    [
                        [t.key, f"`{_short(t.path)}`", t.resources, t.pages, t.p50_ms]
                        for t in timings
                    ],
                )
                for t in timings:
                    if t.pages > 1:
                        report.add(
                            f"`{t.key}` takes {t.pages} sequential pages: its query has "
                            "no `_count`, so the server's default page size (20) "
                            "applies.",
                            "",
                        )
            summary_rows.append(
                [
                    server_label,
                    f"`{patient_id}`",
                    run.p50,
                    slowest.p50_ms,
                    f"{run.p50 / slowest.p50_ms:.2f}x",
                    verdict(run.p50 / slowest.p50_ms <= FETCH_RATIO_MAX),
                    total,
                    f"{run.p50 / total:.2f}x",
                    concurrent_ms,
                    local,
                    fetching,
                    f"{fetching / slowest.p50_ms:.2f}x",
                    f"{fetching / concurrent_ms:.2f}x",
                ]
            )
    calls = hook_calls_from_log(chosen.log_text(limit=5_000_000))
    fetch_calls = [c for c in calls if c.get("fetched")]
    gaps = [c for c in fetch_calls if c.get("unavailable")]
    report.add(
        "Hook call with no prefetch (the service makes all 10 queries itself), "
        f"concurrency 1. `{REPLAY}` answers the same recorded responses after "
        f"{REPLAY_DELAY_S * 1000:.0f} ms each, many at once, like a remote FHIR server; "
        "sekmet-fhir is one local Python process.",
        "",
    )
    report.table(
        [
            "FHIR server",
            "chart",
            "hook p50 ms",
            "slowest query ms",
            "hook / slowest",
            "target <= 1.3x",
            "sum of queries ms",
            "hook / sum",
            "all 10 at once, bare client ms",
            "same chart prefetched, hook p50 ms",
            "fetching part ms (difference)",
            "fetching / slowest",
            "fetching / bare concurrent",
        ],
        summary_rows,
    )
    report.add(
        f"Service log: {len(fetch_calls)} fetching calls, {len(gaps)} with any category "
        "unavailable (must be 0).",
        "",
    )
    if gaps:
        raise RuntimeError(f"fetch path calls lost data: {gaps[:2]}")


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in label)


def _short(path: str) -> str:
    return path.replace("http://loinc.org|", "")


def worker_models(
    report: Report,
    services: dict[str, Gunicorn],
    bodies: Bodies,
    typical: Path,
    chosen_runs: dict[int, tuple[Run, Run]],
    quick: Quick,
) -> None:
    """The same loads on sync and gthread workers: prefetch (CPU-bound) and fetch (waits on I/O)."""
    fetch_body = bodies.directory / f"fetch-{_slug(REPLAY)}-{FETCH_CHART}.json"
    rows = []
    for settings in (CHOSEN, ALTERNATIVE):
        server = services[settings.label()]
        if settings == CHOSEN:
            prefetch_c1, prefetch_c8 = chosen_runs[1][1], chosen_runs[8][1]
        else:
            prefetch_c1 = drive(server, typical, 1, quick.budget(Budget(300, 30, 20)), "sync c=1")
            prefetch_c8 = drive(server, typical, 8, quick.budget(Budget(600, 30, 20)), "sync c=8")
        fetch_c8 = drive(server, fetch_body, 8, quick.budget(Budget(300, 16, 15)), "fetch c=8")
        rows.append(
            [
                f"`{settings.label()}`",
                prefetch_c1.p50,
                prefetch_c8.p50,
                prefetch_c8.p99,
                prefetch_c8.rps,
                fetch_c8.p50,
                fetch_c8.p99,
                fetch_c8.rps,
            ]
        )
    report.table(
        [
            "gunicorn",
            "prefetch c=1 p50 ms",
            "prefetch c=8 p50 ms",
            "prefetch c=8 p99 ms",
            "prefetch c=8 req/s",
            f"fetch ({REPLAY}) c=8 p50 ms",
            "fetch c=8 p99 ms",
            "fetch c=8 req/s",
        ],
        rows,
    )


def memory(report: Report, bodies: Bodies, quick: Quick) -> None:
    """Worker RSS after start, after warm-up, and every 2,500 requests up to 10,000; peak."""
    # New ids on every call, so the per-worker validation verdict cache (bounded in bytes)
    # fills and must stay flat, as it would in production over many patients.
    body = bodies.directory / "typical-varied.json"
    body.write_bytes(vary_template((bodies.directory / "typical.json").read_bytes()))
    total = 40 if quick.enabled else MEMORY_REQUESTS
    step = total // MEMORY_CHECKPOINTS
    with Gunicorn(SERVICE_APP, CHOSEN) as server:
        pids = server.worker_pids()
        snapshots: list[tuple[str, list[dict[str, int]]]] = [
            ("after start", [memory_kib(p) for p in pids])
        ]
        warmup = drive(
            server, body, 8, quick.budget(Budget(200, 0, 60)), "memory warm-up", vary_from=1
        )
        snapshots.append(
            (f"after {warmup.result['requests']} warm-up", [memory_kib(p) for p in pids])
        )
        done, started = 0, time.monotonic()
        rates = []
        while done < total:
            run = drive(
                server, body, 8, Budget(step, 0, 150), f"memory {done}", vary_from=1_000 + done
            )
            done += run.result["requests"]
            rates.append(run.rps)
            snapshots.append((f"after {done:,}", [memory_kib(p) for p in pids]))
            if run.result["timed_out"]:
                break
        elapsed = time.monotonic() - started
        if server.worker_pids() != pids:
            raise RuntimeError("a worker was replaced during the memory run; RSS is meaningless")
    rows = []
    for label, per_worker in snapshots:
        rss = [m["VmRSS"] / MIB for m in per_worker]
        rows.append([label, *rss, sum(rss)])
    peaks = [m["VmHWM"] / MIB for m in snapshots[-1][1]]
    rows.append(["peak (VmHWM)", *peaks, sum(peaks)])
    report.add(
        f"{done:,} order-sign calls (the typical body above, new ids on every call) at "
        f"concurrency 8 in "
        f"{elapsed:.0f} s ({done / elapsed:.0f} req/s), `{CHOSEN.label()}`; worker RSS, "
        "MiB:",
        "",
    )
    report.table(["when", *[f"worker {n + 1}" for n in range(len(pids))], "total"], rows)

    def growth(start: int) -> list[float]:
        return [
            (b["VmRSS"] - a["VmRSS"]) / MIB
            for a, b in zip(snapshots[start][1], snapshots[-1][1], strict=True)
        ]

    def mib(values: list[float]) -> str:
        return ", ".join(f"{g:+.1f} MiB" for g in values)

    settled = growth(2)
    report.add(
        f"RSS growth per worker, {snapshots[1][0]} to {snapshots[-1][0]}: {mib(growth(1))}; "
        f"{snapshots[2][0]} to {snapshots[-1][0]} (allocator pools and caches filled): "
        f"{mib(settled)} — target no growth beyond noise (< {LEAK_MAX_MIB:.0f} MiB per worker "
        f"once settled): {verdict(all(g < LEAK_MAX_MIB for g in settled))}",
        "",
    )


# ---------------------------------------------------------------------------------------------
# Machine and the whole run


def machine_info() -> list[tuple[str, str]]:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal"):
            mem_kib = int(line.split()[1])
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], cwd=REPO_ROOT, capture_output=True, text=True, check=False
    ).stdout.strip()
    return [
        ("date", datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("CPU", f"{cpu}, {os.cpu_count()} cores"),
        ("RAM", f"{mem_kib / 1024 / 1024:.1f} GiB"),
        ("OS", platform.platform()),
        ("Python", platform.python_version()),
        ("gunicorn / Flask", f"{metadata.version('gunicorn')} / {metadata.version('flask')}"),
        ("code", f"{commit or 'no commit'}{' (uncommitted changes)' if dirty else ''}"),
        ("load average at start", " ".join(f"{x:.2f}" for x in os.getloadavg())),
    ]


@contextmanager
def servers(fhir_base: str) -> Iterator[tuple[Gunicorn, dict[str, Gunicorn]]]:
    """The floor and the service on both worker models; the service may query ``fhir_base``."""
    env = {"CDS_FHIR_ALLOWED_SERVERS": fhir_base}
    with (
        Gunicorn(FLOOR_APP, CHOSEN) as floor,
        Gunicorn(SERVICE_APP, CHOSEN, env) as chosen,
        Gunicorn(SERVICE_APP, ALTERNATIVE, env) as alternative,
    ):
        yield floor, {CHOSEN.label(): chosen, ALTERNATIVE.label(): alternative}


def run_all(quick: Quick = Quick(), results_path: Path | None = RESULTS_PATH) -> Report:
    """Run every section; write RESULTS.md unless ``results_path`` is None."""
    started = time.monotonic()
    report = Report()
    report.add(
        "# Benchmark results",
        "",
        "Produced by `.venv/bin/python -m bench` (see bench/README.md). "
        "Latencies are client-side, over keep-alive loopback connections, from a separate "
        "load-generator process; CPU ms/req is the gunicorn workers' user+system time "
        "divided by the requests (less sensitive than latency to other load on the "
        "machine).",
        "",
    )
    report.table(["machine", ""], machine_info())
    report.add(
        "## CPU per request: service / floor (issue 14 headline)",
        "",
        "One sync worker each (`gunicorn -w 1 -k sync`), side by side; per body "
        f"{ratios.ROUNDS if not quick.enabled else 1} alternating rounds floor / service, "
        "medians of the workers' user+system CPU per request. Every request carries new "
        "resource ids, patient id and hookInstance (`bench.payloads.vary_template`), so no "
        "resource is seen twice (validation verdicts of single elements, such as a code or a "
        "dosage, are still reused: bench/README.md). The floor parses with the standard json "
        "module (`bench/floor_app.py`), as issue 14 defines it.",
        "",
    )
    report.add(
        *ratios.table(
            ratios.measure(
                rounds=1 if quick.enabled else ratios.ROUNDS, scale=0.05 if quick.enabled else 1.0
            )
        ),
        "",
    )
    if not quick.enabled:
        report.add(
            "## Instructions per stage (callgrind, `python -m bench.stages`)",
            "",
            "Millions of instructions per hook call (Flask test client, new ids per call), "
            "by stage; stable when other work shares the machine.",
            "",
            "Before issue 14 (commit 519cdf3):",
            "",
            *stages.BEFORE_PATH.read_text(encoding="utf-8").splitlines(),
            "",
            "Now:",
            "",
            *stages.table(stages.profile()),
            "",
        )
    with tempfile.TemporaryDirectory(prefix="cds-bench-bodies-") as tmp:
        bodies = Bodies(Path(tmp), date.today())
        typical = bodies.write("typical", prefetch_request(TYPICAL_OBSERVATIONS, bodies.today))
        with FhirServer() as fhir:
            charts = {
                FETCH_CHART: CHARTS[FETCH_CHART](bodies.today),
                PATIENT_ID: chart_bundle(TYPICAL_OBSERVATIONS, bodies.today),
            }
            recordings: dict[str, str] = {}
            for patient_id, bundle in charts.items():
                fhir.load_bundle(bundle)
                recordings.update(record(fhir.base_url, service_queries(patient_id)))
            with (
                ReplayFhirServer(recordings, REPLAY_DELAY_S) as replay,
                servers(f"{fhir.base_url},{replay.base_url}") as (floor, services),
            ):
                chosen = services[CHOSEN.label()]
                report.add(
                    f"## Service vs floor (`gunicorn {CHOSEN.label()}`)",
                    "",
                    f"Body: order-sign with the LUPKYNIS draft, prefetch of "
                    f"{TYPICAL_OBSERVATIONS} Observations + 100 MedicationRequests "
                    f"({typical.stat().st_size / 1024:,.0f} KiB). The floor is the same "
                    "gunicorn + Flask stack parsing the same JSON and answering "
                    '`{"cards": []}`.',
                    "",
                )
                chosen_runs = floor_vs_service(report, floor, chosen, typical, quick)
                report.add("## Cost growth with the prefetch (concurrency 1)", "")
                cost_growth(report, floor, chosen, bodies, quick)
                report.add("## Fetch path (no prefetch)", "")
                fetch_path(
                    report,
                    {SEKMET: fhir.base_url, REPLAY: replay.base_url},
                    charts,
                    services,
                    bodies,
                    quick,
                )
                report.add("## Worker settings", "")
                worker_models(report, services, bodies, typical, chosen_runs, quick)
        report.add("## Memory", "")
        memory(report, bodies, quick)
    report.add(
        f"Load average at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
        f"whole run {time.monotonic() - started:.0f} s.",
        "",
    )
    if results_path is not None:
        results_path.write_text("\n".join(report.lines), encoding="utf-8")
        print(f"(written to {results_path.relative_to(REPO_ROOT)})")
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="tiny counts (a smoke run); RESULTS.md is not written"
    )
    args = parser.parse_args(argv)
    quick = Quick(args.quick)
    run_all(quick, None if quick.enabled else RESULTS_PATH)
    return 0
