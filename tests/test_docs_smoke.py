"""Docs that work when pasted: the CLI guide's shell steps, run in order from a fresh shell.

``docs/testing-with-the-cli.md`` marks what a reader pastes as fenced ``bash`` blocks (output is in
``text`` blocks). The first test joins every ``bash`` block, in order, into one script and runs it
with ``bash -e`` from the repository root, in an environment without any ``CDS_*`` setting, with
``GUIDE``, ``PORT`` and ``FHIR_PORT`` set to a temp folder and free ports (the guide's own
variables). The script starts sekmet-fhir and the service itself, as the guide says, and stops
them at the end; the test kills the whole process group if it does not get that far.

It skips only when the machine lacks a tool the guide uses (curl, openssl, sekmet-fhir), naming
it; in CI a missing tool fails (``skip_or_fail``). Commands elsewhere (README, connecting-an-ehr)
are checked statically: every ``voclosporin-cds`` flag they use exists, every ``scripts/`` path
exists, and the README anchor ``serve --production`` points at exists.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from cds_service.cli.commands import PRODUCTION_README_SECTION, build_parser
from tests.support.ci import skip_or_fail
from tests.support.fhir_server import free_port

ROOT = Path(__file__).resolve().parents[1]
GUIDE = ROOT / "docs" / "testing-with-the-cli.md"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
TIMEOUT_S = 300

BASH_BLOCK = re.compile(r"^```bash\n(.*?)^```", re.MULTILINE | re.DOTALL)


def bash_blocks(path: Path) -> list[str]:
    """The fenced ``bash`` blocks of a Markdown file, in order."""
    return BASH_BLOCK.findall(path.read_text(encoding="utf-8"))


def guide_script() -> str:
    return "\n".join(bash_blocks(GUIDE))


def test_guide_marks_its_steps_as_bash() -> None:
    """Every numbered step that runs something has a bash block, and the servers are stopped."""
    script = guide_script()
    assert len(bash_blocks(GUIDE)) >= 15
    for needed in (
        "GUIDE=",
        "PORT=${PORT:-8080}",
        "sekmet serve",
        "voclosporin-cds serve",
        "voclosporin-cds hook",
        "voclosporin-cds validate",
        "voclosporin-cds jwks",
        'kill "$SERVICE_PID" "$FHIR_PID"',
    ):
        assert needed in script, needed
    assert "/tmp/guide/" not in script, "the guide must write only into $GUIDE"


@pytest.mark.fhir_server
def test_cli_guide_runs_when_pasted(tmp_path: Path) -> None:
    """The guide's bash blocks, in order, from a fresh shell: every step succeeds, with the cards,
    errors and exit codes the guide shows."""
    for tool in ("curl", "openssl"):
        if shutil.which(tool) is None:
            skip_or_fail(f"the CLI guide uses {tool}, which is not installed")
    if not (Path(sys.executable).parent / "sekmet").exists():
        skip_or_fail(
            "the CLI guide uses sekmet-fhir, which is not in this venv (scripts/setup dev)"
        )
    if not (ROOT / ".venv" / "bin" / "activate").exists():
        skip_or_fail("the CLI guide sources .venv/bin/activate; run scripts/setup dev first")

    script = tmp_path / "guide.sh"
    script.write_text(guide_script(), encoding="utf-8")
    work = tmp_path / "guide"
    port, fhir_port = free_port(), free_port()
    while fhir_port in (port, port + 1) or port == fhir_port + 1:
        fhir_port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CDS_", "VIRTUAL_ENV"))}
    env |= {"GUIDE": str(work), "PORT": str(port), "FHIR_PORT": str(fhir_port)}
    proc = subprocess.Popen(
        ["bash", "--noprofile", "--norc", "-e", str(script)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"the guide did not finish within {TIMEOUT_S} s\n{out[-3000:]}\n{err[-3000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # servers left behind by a failed step
    logs = "".join(
        f"\n--- {log.name}\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted(work.glob("*.log"))
    )
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out[-4000:]}\n{err[-4000:]}{logs}"
    expected_out = [
        "transaction-response 8 entries",
        "transaction-response 10 entries",
        "gunicorn -c python:cds_service.gunicorn_conf",
        "1. CRITICAL BP 170/95 is above 165/105: do not start voclosporin",
        "CRITICAL Contraindicated: voclosporin with strong CYP3A4 inhibitor ketoconazole",
        "4. INFO     Prior authorization (initial approval): 6 of 10 criteria met",  # order-select
        "exit code 2",  # "Jane Doe"
        "response follows CDS Hooks 2.0: 0 error(s), 0 warning(s)",
        "request follows CDS Hooks 2.0: 0 error(s), 0 warning(s)",
        "response breaks CDS Hooks 2.0: 5 error(s), 1 warning(s)",
        '"kid": "test-ehr-1"',
    ]
    for text in expected_out:
        assert text in out, f"{text!r} not in the guide's output\n{out[-4000:]}"
    assert out.count("voclosporin-orders: HTTP 200") == 4  # steps 3, 4, 6 (token), 9 (JWT)
    assert out.count("exit code 3") == 3  # unknown patient, FHIR server and service unreachable
    assert out.count("exit code 1") == 3  # 412, broken response, 401 without a JWT
    for text in ("answered HTTP 412", "answered HTTP 401", "was not found on the FHIR server"):
        assert text in err
    assert not work.exists(), "the guide's last step removes its working folder"


# --------------------------------------------------------------------------- static checks

# A command: at the start of a line (after a prompt, settings or .venv/bin/) or in backticks.
CLI_CALL = re.compile(
    r"(?:^[ \t]*(?:\$ )?(?:[A-Z_]+=\S+[ \t]+)*(?:\.venv/bin/)?|`)"
    r"voclosporin-cds\s+(serve|hook|validate|jwks)\b((?:[^\n`]|\\\n)*)",
    re.MULTILINE,
)
FLAG = re.compile(r"(?<![\w-])(--[a-z][a-z-]*)")


def _subcommand_flags() -> dict[str, set[str]]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction"]
    return {
        name: {opt for action in p._actions for opt in action.option_strings}
        for name, p in sub.choices.items()  # type: ignore[attr-defined]
    }


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_cli_flags_exist(doc: Path) -> None:
    """Every flag written after ``voclosporin-cds <command>`` is one that command accepts."""
    flags = _subcommand_flags()
    unknown = []
    for command, rest in CLI_CALL.findall(doc.read_text(encoding="utf-8")):
        line = rest.split("|")[0].split("#")[0]
        unknown += [
            f"{command} {flag}" for flag in FLAG.findall(line) if flag not in flags[command]
        ]
    assert unknown == []


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_documented_scripts_exist(doc: Path) -> None:
    """Every ``scripts/...`` the docs name is in the repository and executable."""
    names = set(re.findall(r"(?<![\w/.])scripts/([\w-]+)", doc.read_text(encoding="utf-8")))
    for name in names:
        path = ROOT / "scripts" / name
        assert path.is_file(), f"scripts/{name}"
        assert os.access(path, os.X_OK), f"scripts/{name} is not executable"


def _anchors(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    return {
        re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
        for title in re.findall(r"^#+ (.+)$", markdown, re.MULTILINE)
    }


def test_serve_production_points_at_an_existing_readme_section() -> None:
    """The README section serve --production names exists and holds the same command."""
    file, anchor = PRODUCTION_README_SECTION.split("#")
    readme = (ROOT / file).read_text(encoding="utf-8")
    assert anchor in _anchors(readme)
    section = readme.split("\n## Production\n", 1)[1].split("\n## ", 1)[0]
    assert "gunicorn -c python:cds_service.gunicorn_conf" in section
    assert "2 workers x 4 threads" in section


def test_guides_link_to_existing_readme_anchors() -> None:
    """Links from the guides to README sections (``../README.md#x``) name headings that exist."""
    anchors = _anchors((ROOT / "README.md").read_text(encoding="utf-8"))
    for doc in DOCS[1:]:
        for anchor in re.findall(r"\.\./README\.md#([\w-]+)", doc.read_text(encoding="utf-8")):
            assert anchor in anchors, f"{doc.name}: README.md#{anchor}"
