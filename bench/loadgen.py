"""A small closed-loop HTTP load generator, run as its own process so it never shares the GIL
with the server it measures.

``python -m bench.loadgen --port P --path /x --body body.json --concurrency 8 --requests 500``
posts the same body over keep-alive ``http.client`` connections (one per thread; reopened when
the server closes it, as gunicorn sync workers do) and prints one JSON object: latencies in ms,
throughput, status counts. Bounded twice: by ``--requests`` and by ``--max-seconds``.
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.payloads import varied

CONNECT_TIMEOUT_S = 30.0


@dataclass
class _Tickets:
    """Hands out request numbers until the count or the time runs out (shared by the threads)."""

    total: int
    deadline: float
    issued: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def take(self) -> int | None:
        """The next request number, or None when the count or the time has run out."""
        with self.lock:
            if self.issued >= self.total or time.monotonic() >= self.deadline:
                return None
            self.issued += 1
            return self.issued


@dataclass
class _Worker:
    host: str
    port: int
    path: str
    body: bytes
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    vary_from: int | None = None  # the body is a template (bench.payloads.vary_template)

    def run(self, tickets: _Tickets) -> None:
        """Post until the tickets run out; one connection, reopened only when the server closes."""
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        conn = http.client.HTTPConnection(self.host, self.port, timeout=CONNECT_TIMEOUT_S)
        try:
            while (number := tickets.take()) is not None:
                body = self.body
                if self.vary_from is not None:
                    body = varied(self.body, self.vary_from + number)
                started = time.perf_counter()
                try:
                    conn.request("POST", self.path, body=body, headers=headers)
                    response = conn.getresponse()
                    response.read()
                    status = str(response.status)
                    if response.will_close:
                        conn.close()  # http.client reconnects on the next request
                        self.reconnects += 1
                except (OSError, http.client.HTTPException) as exc:
                    conn.close()
                    status = type(exc).__name__
                self.latencies_ms.append((time.perf_counter() - started) * 1000.0)
                self.statuses[status] += 1
        finally:
            conn.close()


def percentile(sorted_values: list[float], fraction: float) -> float:
    """Nearest-rank percentile of an already sorted list (no interpolation: a real sample)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, min(len(sorted_values), round(fraction * len(sorted_values) + 0.5)))
    return sorted_values[rank - 1]


def run_load(
    host: str,
    port: int,
    path: str,
    body: bytes,
    concurrency: int,
    requests: int,
    max_seconds: float,
    vary_from: int | None = None,
) -> dict[str, Any]:
    """Drive the server with ``concurrency`` closed-loop clients; return the summary."""
    tickets = _Tickets(total=requests, deadline=time.monotonic() + max_seconds)
    workers = [_Worker(host, port, path, body, vary_from=vary_from) for _ in range(concurrency)]
    threads = [
        threading.Thread(target=w.run, args=(tickets,), name=f"load-{n}", daemon=True)
        for n, w in enumerate(workers)
    ]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(max_seconds + CONNECT_TIMEOUT_S + 5)
    elapsed = time.perf_counter() - started
    latencies = sorted(x for w in workers for x in w.latencies_ms)
    statuses: Counter[str] = Counter()
    for w in workers:
        statuses.update(w.statuses)
    ok = statuses.get("200", 0)
    return {
        "requests": len(latencies),
        "ok": ok,
        "statuses": dict(statuses),
        "reconnects": sum(w.reconnects for w in workers),
        "concurrency": concurrency,
        "elapsed_s": elapsed,
        "throughput_rps": len(latencies) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(latencies, 0.50),
        "p90_ms": percentile(latencies, 0.90),
        "p99_ms": percentile(latencies, 0.99),
        "max_ms": latencies[-1] if latencies else float("nan"),
        "timed_out": len(latencies) < requests,
        "still_running": any(t.is_alive() for t in threads),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", required=True)
    parser.add_argument("--body", type=Path, required=True, help="file with the JSON body")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--requests", type=int, required=True, help="measured requests")
    parser.add_argument("--warmup", type=int, default=0, help="unmeasured requests first")
    parser.add_argument("--max-seconds", type=float, default=60.0)
    parser.add_argument(
        "--vary-from",
        type=int,
        default=None,
        help="the body is a template: request n carries number FROM + n in every id",
    )
    args = parser.parse_args(argv)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        parser.error("the benchmark only drives servers on loopback")
    body = args.body.read_bytes()
    if args.warmup:
        run_load(
            args.host,
            args.port,
            args.path,
            body,
            args.concurrency,
            args.warmup,
            args.max_seconds,
            args.vary_from,
        )
    vary = args.vary_from
    result = run_load(
        args.host,
        args.port,
        args.path,
        body,
        args.concurrency,
        args.requests,
        args.max_seconds,
        None if vary is None else vary + args.warmup,
    )
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
