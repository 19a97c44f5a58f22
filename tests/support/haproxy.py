"""A real load balancer for the multi-instance test: Debian's haproxy, installed like Chromium.

The session fixture ``haproxy_binary`` finds ``/usr/sbin/haproxy`` or installs Debian's package
with apt (we are root here and in CI). Without it, and outside CI, the tests skip with the
reason; in CI (``CI=true``) they fail instead, so a green CI means two instances really sat
behind a load balancer. ``LoadBalancer`` runs one haproxy in the foreground on 127.0.0.1 with a
round-robin backend that checks each server's ``/readyz`` (as docs/operating.md recommends).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.support.ci import skip_or_fail

HAPROXY_PATHS = ("/usr/sbin/haproxy", "/usr/bin/haproxy")


def find_haproxy() -> str | None:
    """Return the haproxy executable's path, or None when it is not installed."""
    for path in HAPROXY_PATHS:
        if os.access(path, os.X_OK):
            return path
    return shutil.which("haproxy")


def install_haproxy() -> None:
    """Install Debian's haproxy package (needs root; CI and these machines are root)."""
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, timeout=900, capture_output=True)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "haproxy"],
        check=True,
        env=env,
        timeout=900,
        capture_output=True,
    )


@pytest.fixture(scope="session")
def haproxy_binary() -> str:
    """Provide haproxy, installing Debian's package on first use."""
    executable = find_haproxy()
    if executable is None:
        if os.geteuid() != 0:
            skip_or_fail("haproxy is not installed and installing it needs root")
        try:
            install_haproxy()
        except (OSError, subprocess.SubprocessError) as exc:
            skip_or_fail(f"could not install Debian haproxy: {exc}")
        executable = find_haproxy()
        if executable is None:
            skip_or_fail("apt-get installed haproxy but no executable was found")
    assert executable is not None
    return executable


def haproxy_config(port: int, servers: Sequence[int]) -> str:
    """Round robin over ``servers``; a server is out after two failed /readyz checks 300 ms
    apart; a refused connection is retried on the other server (``redispatch``)."""
    lines = [
        "global",
        "    maxconn 512",
        "defaults",
        "    mode http",
        "    timeout connect 1s",
        "    timeout client 20s",
        "    timeout server 20s",
        "    retries 3",
        "    option redispatch 1",
        "frontend cds",
        f"    bind 127.0.0.1:{port}",
        "    default_backend instances",
        "backend instances",
        "    balance roundrobin",
        "    option httpchk GET /readyz",
        "    http-check expect status 200",
        "    default-server inter 300ms fall 2 rise 1",
    ]
    lines += [f"    server i{n} 127.0.0.1:{p} check" for n, p in enumerate(servers)]
    return "\n".join(lines) + "\n"


@contextmanager
def load_balancer(binary: str, directory: Path, port: int, servers: Sequence[int]) -> Iterator[str]:
    """Run haproxy in the foreground until the block ends; yield its base URL."""
    config = directory / "haproxy.cfg"
    config.write_text(haproxy_config(port, servers))
    log = directory / "haproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-db", "-f", str(config)], stdout=out, stderr=subprocess.STDOUT
        )
    base_url = f"http://127.0.0.1:{port}"
    try:
        give_up = time.monotonic() + 15
        while True:
            try:
                if requests.get(f"{base_url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            if process.poll() is not None or time.monotonic() > give_up:
                pytest.fail(f"haproxy did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        yield base_url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
