"""Headless Chromium for tests that must see a page as a person would.

The session fixture ``chromium`` finds Debian's Chromium or installs it with apt (we are
root here and in CI). Without it, and outside CI, the browser tests skip with the reason;
in CI (``CI=true``) they fail instead, so a green CI always means the page was really seen.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.ci import skip_or_fail

CHROMIUM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")

# Flags that keep a headless run hermetic: no sandbox (root in a container), no GPU, and
# no background traffic to Google services (this machine has no internet).
_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    # Paint the whole frame before the screenshot (else tall pages come out half drawn).
    "--run-all-compositor-stages-before-draw",
)


def find_chromium() -> str | None:
    """Return the Chromium executable's path, or None when it is not installed."""
    for path in CHROMIUM_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("chromium")


def install_chromium() -> None:
    """Install Debian's chromium package (needs root; CI and these machines are root)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, timeout=900, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "chromium"],
        check=True,
        env=env,
        timeout=1800,
        capture_output=True,
    )


@dataclass(frozen=True)
class Chromium:
    """A headless Chromium that loads one URL per process, each with a fresh profile."""

    executable: str
    profile_root: Path

    def _run(self, url: str, extra: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run Chromium once on ``url`` with a throw-away profile directory."""
        with tempfile.TemporaryDirectory(dir=self.profile_root) as profile:
            args = [self.executable, *_FLAGS, f"--user-data-dir={profile}", *extra, url]
            return subprocess.run(
                args, capture_output=True, text=True, timeout=timeout, check=False
            )

    def dump_dom(self, url: str, *, budget_ms: int = 5000, timeout: float = 90) -> str:
        """Return the DOM after scripts ran (the page as the browser built it)."""
        done = self._run(url, ["--dump-dom", f"--virtual-time-budget={budget_ms}"], timeout)
        if done.returncode != 0 or "<html" not in done.stdout:
            raise AssertionError(
                f"chromium --dump-dom failed ({done.returncode}): {done.stderr[-2000:]}"
            )
        return done.stdout

    def screenshot(
        self,
        url: str,
        path: Path,
        *,
        width: int = 1280,
        height: int = 900,
        budget_ms: int = 5000,
        timeout: float = 90,
    ) -> Path:
        """Save a PNG of the page as a person would see it in a window of that size."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)
        done = self._run(
            url,
            [
                f"--screenshot={path}",
                f"--window-size={width},{height}",
                f"--virtual-time-budget={budget_ms}",
            ],
            timeout,
        )
        if done.returncode != 0 or not path.exists():
            raise AssertionError(
                f"chromium --screenshot failed ({done.returncode}): {done.stderr[-2000:]}"
            )
        return path


@pytest.fixture(scope="session")
def chromium(tmp_path_factory: pytest.TempPathFactory) -> Chromium:
    """Provide headless Chromium, installing Debian's package on first use."""
    executable = find_chromium()
    if executable is None:
        if os.geteuid() != 0:
            skip_or_fail("chromium is not installed and installing it needs root")
        try:
            install_chromium()
        except (OSError, subprocess.SubprocessError) as exc:
            skip_or_fail(f"could not install Debian chromium: {exc}")
        executable = find_chromium()
        if executable is None:
            skip_or_fail("apt-get installed chromium but no executable was found")
    assert executable is not None
    return Chromium(executable, tmp_path_factory.mktemp("chromium-profiles"))
