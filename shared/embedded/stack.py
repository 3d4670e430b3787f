"""The embedded deployment behind ``cadre up`` / ``cadre down``: no Docker, just processes.

``Embedded`` starts a nats-server (unless pointed at an existing one) and
every service as a child process, records them in a state file
(``.cadre/up.json``) so ``cadre down`` and the other commands can find the
deployment, waits until each service answers nats micro ``$SRV.PING``, and
stops everything in order: services first (SIGTERM, they drain), then the
server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

import msgspec

from shared.bus.settings import BusSettings
from shared.client import CadreClient, ServiceInfo
from shared.contract.errors import CadreError
from shared.contract.protocol import AGENT_ROLES, now
from shared.embedded.launcher import SERVICES, Stack
from shared.embedded.natsserver import NatsServer

__all__ = [
    "Embedded",
    "UpState",
    "ProcessRecord",
    "ServiceFailed",
    "read_state",
    "live_state",
    "stop_recorded",
    "pid_alive",
    "service_name",
    "PortTaken",
    "monitor_port",
]

logger = logging.getLogger(__name__)

STATE_FILE = "up.json"


def service_name(service: str) -> str:
    """The nats micro name a Cadre service registers under."""
    return f"cadre-{service}"


class ProcessRecord(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    pid: int
    instance_id: str = ""
    log: str = ""


class UpState(msgspec.Struct, kw_only=True):
    """What ``cadre up`` leaves in ``<state_dir>/up.json`` while it runs."""

    nats_url: str
    prefix: str
    pid: int
    started_at: float
    ready: bool = False
    monitor_url: str = ""
    nats: ProcessRecord | None = None
    services: list[ProcessRecord] = []


class ServiceFailed(CadreError):
    """A service process exited while the deployment was starting."""


class PortTaken(CadreError):
    """An explicitly configured port is already in use on this machine."""


def _port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def _last_line(path: Path | None) -> str:
    """The last non-empty line of a service log: usually why it exited."""
    if path is None:
        return ""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 4096))
            lines = [ln.strip() for ln in fh.read().decode(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


class MonitorPortSettings(Protocol):
    """The monitor settings ``monitor_port`` reads (``MonitorSettings``; the dev stack imports no service)."""

    monitor_http_host: str
    monitor_http_port: int

    @property
    def model_fields_set(self) -> set[str]: ...


def monitor_port(settings: MonitorPortSettings) -> dict[str, object]:
    """The monitor settings ``cadre up`` hands on: the configured port, given way when taken.

    Only the default gives way (the monitor binds a free port when it finds its port taken,
    even if another ``cadre up`` took it a moment after this check). A port the user set
    (``CADRE_MONITOR_HTTP_PORT``) that is taken is an error naming the port and the setting,
    never a silent move elsewhere.
    """
    host, port = settings.monitor_http_host, settings.monitor_http_port
    if "monitor_http_port" not in settings.model_fields_set:
        return {"monitor_http_port_fallback": True}
    if port != 0 and not _port_free(host, port):
        raise PortTaken(
            f"monitor HTTP port {port} on {host} is already in use "
            "(set by CADRE_MONITOR_HTTP_PORT): free it or choose another port"
        )
    return {}


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _looks_like(pid: int, markers: Iterable[str]) -> bool:
    """Guard against pid reuse: the process's command line names what we started."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return pid_alive(pid)  # no /proc (macOS): trust the state file
    return any(m in cmdline for m in markers)


def read_state(state_dir: Path) -> UpState | None:
    path = state_dir / STATE_FILE
    try:
        return msgspec.json.decode(path.read_bytes(), type=UpState)
    except (OSError, msgspec.DecodeError, msgspec.ValidationError):
        return None


def live_state(state_dir: Path) -> UpState | None:
    """The state of a running ``cadre up`` (None when there is none or it died)."""
    state = read_state(state_dir)
    if state is None or not pid_alive(state.pid):
        return None
    return state


def _signal_and_wait(pid: int, timeout: float) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def stop_recorded(state_dir: Path, timeout: float = 60.0) -> UpState | None:
    """``cadre down``: ask the ``cadre up`` process to stop; clean up what a dead one left."""
    state = read_state(state_dir)
    if state is None:
        return None
    if pid_alive(state.pid) and _looks_like(state.pid, ("shared.client.cli.app", "cadre")):
        _signal_and_wait(state.pid, timeout)
    for rec in state.services:
        if pid_alive(rec.pid) and _looks_like(rec.pid, (f"services.{rec.name}",)):
            _signal_and_wait(rec.pid, timeout)
    if state.nats and pid_alive(state.nats.pid) and _looks_like(state.nats.pid, ("nats-server",)):
        _signal_and_wait(state.nats.pid, timeout)
    with contextlib.suppress(FileNotFoundError):
        (state_dir / STATE_FILE).unlink()
    return state


S = TypeVar("S", bound=BusSettings)


@dataclass
class Embedded(Generic[S]):
    """One embedded deployment: a nats-server (optional) and a ``Stack`` of services.

    ``settings`` are handed to every service (``cadre up`` passes a ``StackSettings``: every
    service's fields).
    """

    settings: S
    state_dir: Path
    services: tuple[str, ...] = SERVICES
    replicas: int = 1
    use_existing_server: bool = False
    server: NatsServer | None = field(default=None, init=False)
    stack: Stack | None = field(default=None, init=False)
    state: UpState | None = field(default=None, init=False)
    monitor_url: str = field(default="", init=False)  # the URL the monitor bound, once healthy

    def start(self) -> S:
        """Start the server and the services; returns the settings clients should use."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        if not self.use_existing_server:
            self.server = NatsServer(store_dir=self.state_dir / "nats").start()
            self.settings = self.settings.model_copy(update={"nats_url": self.server.url})
        self.stack = Stack(self.settings, log_dir=self.state_dir / "logs")
        self._write_state()  # early, so `cadre down` finds a half-started deployment too
        for name in self.services:
            for _ in range(self.replicas if name in AGENT_ROLES else 1):
                self.stack.add(name)
        self._write_state()
        return self.settings

    def expected(self) -> Counter[str]:
        """How many instances of each micro service name should answer."""
        assert self.stack is not None
        return Counter(service_name(p.name) for p in self.stack.processes)

    def check_processes(self) -> None:
        """Raise ``ServiceFailed`` naming the first service process that exited."""
        assert self.stack is not None
        for p in self.stack.processes:
            if not p.alive():
                code = p.proc.returncode if p.proc else None
                cause = _last_line(p.log_path)
                raise ServiceFailed(
                    f"service {p.name} exited with code {code}"
                    + (f": {cause}" if cause else "")
                    + f" (log: {p.log_path})"
                )

    async def wait_healthy(self, client: CadreClient, within: float) -> list[ServiceInfo]:
        """Ping until every started instance answers; fail fast when a process dies."""
        want = self.expected()
        deadline = time.monotonic() + within
        seen: list[ServiceInfo] = []
        while True:
            self.check_processes()
            seen = await client.services(wait=0.3, names=sorted(want))
            got = Counter(s.name for s in {s.id: s for s in seen}.values())
            if all(got[name] >= n for name, n in want.items()):
                monitors = [s for s in seen if s.name == service_name("monitor")]
                if monitors and monitors[0].metadata.get("http_url"):
                    self.monitor_url = monitors[0].metadata["http_url"].rstrip("/") + "/"
                self.mark_ready()
                return seen
            if time.monotonic() > deadline:
                missing = {name: n - got[name] for name, n in want.items() if got[name] < n}
                raise ServiceFailed(f"services not answering after {within:.0f}s: {missing}")
            await asyncio.sleep(0.2)

    def mark_ready(self) -> None:
        if self.state is not None:
            self.state.ready = True
            self._write_state()

    def _write_state(self) -> None:
        procs = self.stack.processes if self.stack else []
        self.state = UpState(
            nats_url=self.settings.nats_url,
            prefix=self.settings.prefix,
            pid=os.getpid(),
            started_at=self.state.started_at if self.state else now(),
            ready=self.state.ready if self.state else False,
            monitor_url=self.monitor_url,
            nats=(
                ProcessRecord(name="nats-server", pid=self.server.proc.pid, log=str(self.server.store_dir))
                if self.server and self.server.proc
                else None
            ),
            services=[
                ProcessRecord(
                    name=p.name,
                    pid=p.pid,
                    instance_id=p.env.get("CADRE_INSTANCE_ID", ""),
                    log=str(p.log_path or ""),
                )
                for p in procs
            ],
        )
        tmp = self.state_dir / (STATE_FILE + ".tmp")
        tmp.write_bytes(msgspec.json.format(msgspec.json.encode(self.state)))
        tmp.replace(self.state_dir / STATE_FILE)

    def stop(self, timeout: float = 30.0) -> None:
        """Services first (SIGTERM: they drain), then the server; remove the state file."""
        if self.stack is not None:
            self.stack.stop(timeout)
        if self.server is not None:
            self.server.stop()
        with contextlib.suppress(FileNotFoundError):
            (self.state_dir / STATE_FILE).unlink()
