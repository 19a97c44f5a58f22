"""``python -m bench.stages``: instruction counts per stage of a hook call (callgrind).

Instruction counts hardly move when other work shares the machine, so they judge a change where
timings cannot. The script re-runs itself under ``valgrind --tool=callgrind`` with
``--dump-before=getppid``: in the child, wrappers around each stage's function call
``os.getppid()`` on entry and exit, so each callgrind dump holds exactly one stretch of work,
attributed to the innermost stage running then ("Flask, logging, metrics" is what is left).
Calls go through the Flask test client (no gunicorn), each with new ids (``vary_template``).
The floor (``bench.floor_app``) answers the same calls first, counted whole, so the table ends
with the service / floor ratio in instructions (gunicorn's own work, the same for both, is not
in either count).
"""

from __future__ import annotations

import functools
import gc
import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections import defaultdict
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

BEFORE_PATH = Path(__file__).with_name("stages_before.md")
CALLS = {"small": 6, "100+100": 3, "1000+100": 2}
OTHER = "Flask, logging, metrics, rest"
FLOOR = "floor"  # bench.floor_app on the same calls: parse the JSON, answer no cards
# (stage, module, attribute): the function whose calls are the stage (innermost wins).
STAGES: tuple[tuple[str, str, str], ...] = (
    ("JSON parse", "cds_service.api", "read_json"),
    ("JSON parse", "cds_service.api", "parse_json"),
    ("wire schema (marshmallow load)", "cds_service.api", "HOOK_REQUEST.load"),
    ("wire schema (marshmallow load)", "cds_service.service", "load_context"),
    ("prefetch -> chart", "cds_service.service", "gather_chart"),
    ("raw FHIR -> facts", "cds_service.service", "build_facts"),
    ("fhir.resources validation", "fhir_mappings.mapper", "validation_problem"),
    ("rules", "cds_service.service", "evaluate"),
    ("rules", "cds_service.repeats", "RepeatFilter.apply"),
    ("cards", "cds_service.service", "build_cards"),
    ("response dump + serialise", "cds_service.api", "HOOK_RESPONSE.dump"),  # before issue 14
    ("response dump + serialise", "cds_service.api", "jsonify"),
    ("response dump + serialise", "cds_service.api", "respond"),
    ("audit write (synchronous)", "cds_service.recording", "Recorder.record_call"),
)


_STACK = [OTHER]
_BODY: list[str | None] = [None]


def _mark(labels: list[Any]) -> None:
    """End the current callgrind dump; note whose work it held (stage, body)."""
    labels.append([_STACK[-1], _BODY[0]])
    os.getppid()


def _instrument(labels: list[Any]) -> None:
    """Wrap each stage's function so its entry and exit each end a callgrind dump."""
    stack = _STACK

    def wrap(stage: str, function: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(function)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            _mark(labels)
            stack.append(stage)
            try:
                return function(*args, **kwargs)
            finally:
                _mark(labels)
                stack.pop()

        return wrapper

    for stage, module_name, attribute in STAGES:
        owner: Any = importlib.import_module(module_name)
        *path, name = attribute.split(".")
        for part in path:
            owner = getattr(owner, part, None)
        if owner is None or not hasattr(owner, name):  # a stage of older or newer code
            continue
        setattr(owner, name, wrap(stage, getattr(owner, name)))


def _child(out: Path) -> None:
    """Run the calls (under callgrind); write the stage label of each dump to ``out``."""
    from bench.floor_app import create_app as create_floor
    from bench.payloads import encode, prefetch_request, small_request, varied, vary_template
    from cds_service import create_app

    today = date.today()
    bodies = {
        "small": small_request(today),
        "100+100": prefetch_request(100, today),
        "1000+100": prefetch_request(1_000, today),
    }
    templates = {name: vary_template(encode(body)) for name, body in bodies.items()}
    tmp = tempfile.mkdtemp(prefix="cds-bench-stages-")
    app = create_app(
        {"CDS_DATABASE_URL": f"sqlite:///{tmp}/audit.sqlite3", "CDS_AUDIT_HASH_KEY": "bench"}
    )
    clients = {"service": app.test_client(), FLOOR: create_floor().test_client()}
    numbers = iter(range(1, 1 << 31))  # new ids on every call, whichever app answers it

    def post(template: bytes, to: str = "service") -> None:
        response = clients[to].post(
            "/cds-services/voclosporin-order-sign",
            data=varied(template, next(numbers)),
            content_type="application/json",
        )
        assert response.status_code == 200, response.data[:500]

    def count(labels: list[Any], to: str) -> None:
        """One dump per body: ``CALLS`` calls of it, answered by ``to``."""
        for name, template in templates.items():
            _mark(labels)
            _BODY[0] = name
            for _ in range(CALLS[name]):
                post(template, to)
            _mark(labels)
            _BODY[0] = None

    for template in templates.values():  # warm every path before counting
        post(template)
        post(template, FLOOR)
    gc.freeze()  # as gunicorn.conf.py does after start-up: collections then walk only new objects
    labels: list[Any] = []
    _STACK.append(FLOOR)  # the floor first, before any stage is wrapped: all of it is "floor"
    count(labels, FLOOR)
    _STACK.pop()
    _instrument(labels)
    count(labels, "service")
    out.write_text(json.dumps(labels))


def _totals(path: Path) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    return 0


def profile() -> dict[str, dict[str, float]]:
    """Run the child under callgrind; instructions per call, by body and stage."""
    with tempfile.TemporaryDirectory(prefix="cds-callgrind-") as tmp:
        labels_path = Path(tmp) / "labels.json"
        completed = subprocess.run(
            [
                "valgrind",
                "--tool=callgrind",
                "--dump-before=getppid",
                "--dump-instr=no",
                "--compress-strings=no",
                f"--callgrind-out-file={tmp}/cg.out",
                sys.executable,
                "-m",
                "bench.stages",
                "--child",
                str(labels_path),
            ],
            check=False,
            capture_output=True,
            text=True,
        )
        if completed.returncode != 0:
            raise RuntimeError(f"callgrind run failed:\n{completed.stderr[-4000:]}")
        labels = json.loads(labels_path.read_text())
        dumps = sorted(Path(tmp).glob("cg.out.*"), key=lambda p: int(p.suffix[1:]))
        counts: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
        # Dump k (1-based) ends at the k-th getppid, the k-th label; the first dumps are the
        # start-up and warm-up before instrumenting (they hold no label: skipped).
        offset = len(dumps) - len(labels)  # cg.out (no suffix) is the exit, not globbed
        for index, (stage, body) in enumerate(labels):
            if body is not None:
                counts[body][stage] += _totals(dumps[offset + index])
        return {
            name: {stage: n / CALLS[name] for stage, n in stages.items()}
            for name, stages in counts.items()
        }


def table(counts: dict[str, dict[str, float]]) -> list[str]:
    """Millions of instructions per call and share, per stage and body."""
    names = list(CALLS)
    stages = list(dict.fromkeys([s for s, _, _ in STAGES] + [OTHER]))
    header = ["stage", *(f"{n} M instr (share)" for n in names)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    totals = {
        n: sum(v for stage, v in counts.get(n, {}).items() if stage != FLOOR) or 1 for n in names
    }
    for stage in stages:
        cells = [
            f"{counts.get(n, {}).get(stage, 0) / 1e6:.2f} "
            f"({100 * counts.get(n, {}).get(stage, 0) / totals[n]:.0f}%)"
            for n in names
        ]
        lines.append("| " + " | ".join([stage, *cells]) + " |")
    lines.append(
        "| **whole call** | " + " | ".join(f"**{totals[n] / 1e6:.2f}**" for n in names) + " |"
    )
    floors = {n: counts.get(n, {}).get(FLOOR, 0) for n in names}
    if all(floors.values()):  # tables of older runs have no floor row
        lines.append(
            "| floor (`bench.floor_app`, whole call) | "
            + " | ".join(f"{floors[n] / 1e6:.2f}" for n in names)
            + " |"
        )
        lines.append(
            "| **service / floor** | "
            + " | ".join(f"**{totals[n] / floors[n]:.2f}x**" for n in names)
            + " |"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args[:1] == ["--child"]:
        _child(Path(args[1]))
        return 0
    print("\n".join(table(profile())))
    return 0


if __name__ == "__main__":
    sys.exit(main())
