"""A raw TCP "FHIR server" on 127.0.0.1 that is slow where werkzeug cannot be: in its headers.

werkzeug writes the status line and headers at once, so ``FaultyFhir`` can only trickle a
body. This server speaks just enough HTTP/1.1 by hand to stall earlier:

- ``trickle-headers``: the status line and headers one byte every ``interval`` seconds, so
  no single socket read times out and the answer never completes in time;
- ``slow``: wait ``interval`` seconds, then a valid empty searchset at once.

It records how many connections are open at once (``max_open``) and how long each stayed open
(``held``), so a test can prove that the client let go at its deadline and that a per-host
limit held.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import socket
import ssl
import threading
import time
from pathlib import Path
from types import TracebackType

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

EMPTY_BUNDLE = json.dumps({"resourceType": "Bundle", "type": "searchset", "entry": []}).encode()
MAX_STALL_SECONDS = 20.0


class SlowSocketServer:
    """Accept connections and answer each in its own thread with the chosen stall."""

    def __init__(self, mode: str, interval: float = 0.1, *, tls_folder: Path | None = None) -> None:
        if mode not in ("trickle-headers", "slow"):
            raise ValueError(f"unknown mode {mode!r}")
        self.mode, self.interval = mode, interval
        # https with a self-signed certificate for 127.0.0.1 (``certificate`` for the client).
        self.certificate: Path | None = None
        self._tls: ssl.SSLContext | None = None
        if tls_folder is not None:
            self.certificate, key = self_signed_certificate(tls_folder)
            self._tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            self._tls.load_cert_chain(self.certificate, key)
        self.lock = threading.Lock()
        self.open_now = 0
        self.max_open = 0
        self.held: list[float] = []  # seconds each connection stayed open, client side closing
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(0.05)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="slow-socket", daemon=True)

    @property
    def base_url(self) -> str:
        """The FHIR base URL, e.g. ``http://127.0.0.1:40123/fhir`` (https with ``tls_folder``)."""
        scheme = "https" if self._tls is not None else "http"
        return f"{scheme}://127.0.0.1:{self._listener.getsockname()[1]}/fhir"

    def __enter__(self) -> SlowSocketServer:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._listener.close()

    def wait_until_closed(self, count: int, timeout: float = 10.0) -> list[float]:
        """Wait until ``count`` connections have closed; return how long each was held."""
        give_up = time.monotonic() + timeout
        while time.monotonic() < give_up:
            with self.lock:
                if len(self.held) >= count:
                    return list(self.held)
            time.sleep(0.02)
        with self.lock:
            return list(self.held)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        opened = time.monotonic()
        with self.lock:
            self.open_now += 1
            self.max_open = max(self.max_open, self.open_now)
        try:
            if self._tls is not None:
                conn.settimeout(MAX_STALL_SECONDS)
                conn = self._tls.wrap_socket(conn, server_side=True)
            with conn:
                conn.settimeout(MAX_STALL_SECONDS)
                self._read_request(conn)
                if self.mode == "slow":
                    self._stop.wait(self.interval)
                    conn.sendall(_answer(EMPTY_BUNDLE))
                    conn.shutdown(socket.SHUT_WR)
                    conn.recv(1)  # until the client closes
                else:
                    self._trickle(conn, _answer(EMPTY_BUNDLE))
        except OSError:
            pass  # the client cut the connection: what the deadline is for
        finally:
            with self.lock:
                self.open_now -= 1
                self.held.append(time.monotonic() - opened)

    def _read_request(self, conn: socket.socket) -> None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                raise OSError("client left before sending a request")
            data += chunk

    def _trickle(self, conn: socket.socket, answer: bytes) -> None:
        # Pad the headers so the trickle outlasts any deadline a test uses.
        status, _, rest = answer.partition(b"\r\n")
        padded = status + b"\r\n" + b"X-Pad: " + b"." * 400 + b"\r\n" + rest
        give_up = time.monotonic() + MAX_STALL_SECONDS
        for byte in padded:
            if self._stop.is_set() or time.monotonic() > give_up:
                return
            conn.sendall(bytes([byte]))
            time.sleep(self.interval)


def _answer(body: bytes) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/fhir+json\r\n"
        + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """Write a certificate and key for 127.0.0.1 into ``folder``; return their paths."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "server.pem", folder / "server.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path
