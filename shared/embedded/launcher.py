"""Start Cadre's services as child processes (the embedded default and the tests).

``ServiceProcess`` runs ``python -m services.<name>`` with its settings passed
as ``CADRE_*`` environment variables (on top of this process's own environment,
so a ``CADRE_*`` variable set here reaches every child too); ``Stack`` starts a
set of them and stops them all (SIGTERM, then SIGKILL past a bound). The
settings handed on are usually a ``StackSettings`` (every service's fields).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from pydantic_settings import BaseSettings

__all__ = ["ServiceProcess", "Stack", "settings_env", "SERVICES"]

SERVICES = ("orchestrator", "researcher", "developer", "reviewer", "monitor")


def settings_env(settings: BaseSettings, **overrides: object) -> dict[str, str]:
    """The ``CADRE_*`` variables that hand every field of ``settings`` (plus overrides) to a child.

    Every field, not a hand-kept list: a setting added later reaches the services without
    anyone remembering to forward it (``tests/unit/test_launcher.py`` round-trips them all).
    """
    env: dict[str, str] = {}
    values = settings.model_dump()
    unknown = set(overrides) - set(values)
    if unknown:
        raise ValueError(f"unknown setting(s) {sorted(unknown)}")
    values.update(overrides)
    for key, value in values.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            value = ",".join(str(v) for v in value)
        env[f"CADRE_{key.upper()}"] = str(value)
    return env


@dataclass
class ServiceProcess:
    """One service process."""

    name: str
    env: dict[str, str]
    log_path: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> ServiceProcess:
        env = {**os.environ, **self.env, "PYTHONUNBUFFERED": "1"}
        out: int | IO[bytes] = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
            out = self._log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", f"services.{self.name}"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            # own session: a terminal's Ctrl-C goes to the supervisor, which stops services in order
            start_new_session=True,
        )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the crash case."""
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def terminate(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait for the drain; SIGKILL past ``timeout``."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.proc.returncode


@dataclass
class Stack:
    """A set of service processes started together and stopped together."""

    settings: BaseSettings
    log_dir: Path | None = None
    processes: list[ServiceProcess] = field(default_factory=list)

    def add(self, name: str, *, instance: str | None = None, **overrides: object) -> ServiceProcess:
        role_overrides: dict[str, object] = dict(overrides)
        idx = sum(1 for p in self.processes if p.name == name) + 1
        role_overrides.setdefault("instance_id", instance or f"{name}-{idx}")
        env = settings_env(self.settings, **role_overrides)
        log = self.log_dir / f"{role_overrides['instance_id']}.log" if self.log_dir else None
        proc = ServiceProcess(name, env, log).start()
        self.processes.append(proc)
        return proc

    def start(self, services: Iterable[str] = SERVICES, replicas: int = 1) -> Stack:
        for name in services:
            for _ in range(replicas if name in ("researcher", "developer", "reviewer") else 1):
                self.add(name)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        for p in self.processes:
            if p.alive() and p.proc is not None:
                p.proc.send_signal(signal.SIGTERM)
        for p in self.processes:
            p.terminate(timeout)

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
