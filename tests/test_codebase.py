"""Guards on the codebase itself: layering, documented settings, lint."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from cds_service.config import SETTINGS

ROOT = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module.split(".")[0])
    return names


# The clinical core: importing any of these must not load a web, I/O or storage library.
CORE_MODULES = sorted(
    {
        "cds_service",
        "cds_service.errors",
        *(
            ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
            for package in ("fhir_mappings", "cds_service/rules")
            for p in (ROOT / package).rglob("*.py")
        ),
    }
)
NOT_IN_CORE = (
    "flask",
    "werkzeug",
    "requests",
    "sqlalchemy",
    "alembic",
    "marshmallow",
    "jwt",
    "redis",
    "psycopg",
)


@pytest.mark.parametrize("module", CORE_MODULES)
def test_clinical_core_loads_no_web_or_io_library(module):
    """Rules, engine and mappings import, even transitively, no Flask, requests or database."""
    probe = f"import sys, {module}; print(sorted(m for m in {NOT_IN_CORE!r} if m in sys.modules))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "[]", f"importing {module} loads {result.stdout.strip()}"


def test_the_layering_probe_sees_a_transitive_import():
    """The probe above can fail: importing the app factory loads Flask."""
    probe = "import sys, cds_service; cds_service.create_app; print('flask' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "True"


def test_only_fhir_client_and_auth_use_requests():
    """requests is confined to the FHIR client, JWKS fetching, the app's session set-up and the
    CLI's own HTTP (it plays the EHR and the CDS client)."""
    users = {
        p.relative_to(ROOT).as_posix()
        for p in (ROOT / "cds_service").rglob("*.py")
        if "requests" in imported_modules(p)
    }
    assert users <= {
        "cds_service/fhir_client.py",
        "cds_service/auth/keys.py",
        "cds_service/auth/verifier.py",
        "cds_service/app.py",
        "cds_service/chart.py",
        "cds_service/cli/commands.py",
        "cds_service/cli/ehr_client.py",
        "cds_service/cli/service_calls.py",
    }


def test_readme_settings_table_matches_config():
    """Every setting in config.py is in the README table with its default, and nothing else."""
    readme = (ROOT / "README.md").read_text()
    table = readme.split("<!-- settings-table:start -->")[1].split("<!-- settings-table:end -->")[0]
    documented = dict(re.findall(r"^\| `([A-Z_]+)` \| ([^|]+) \|", table, re.M))
    assert set(documented) == {s.name for s in SETTINGS}
    for setting in SETTINGS:
        default = setting.default
        shown = (
            "unset"
            if default is None
            else f"`{str(default).lower() if isinstance(default, bool) else default}`"
        )
        assert documented[setting.name].strip() == shown, setting.name


@pytest.mark.skipif(
    shutil.which("ruff", path=str(Path(sys.executable).parent)) is None,
    reason="ruff is installed with the dev extras",
)
def test_ruff_clean():
    """The code is ruff clean (the house lint set in pyproject.toml)."""
    ruff = str(Path(sys.executable).parent / "ruff")
    result = subprocess.run(
        [ruff, "check", "--quiet", str(ROOT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout[-3000:]


def test_empty_issuer_list_does_not_turn_authentication_off():
    """CDS_JWT_ISSUERS='{}' stops start-up instead of silently trusting every caller."""
    from cds_service.config import from_environment

    with pytest.raises(RuntimeError, match="names no issuer"):
        from_environment({"CDS_JWT_ISSUERS": "{}"})
