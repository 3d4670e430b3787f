"""A chaos cluster: its own nats-server (killable), service processes, and an observer.

The session's shared nats-server must never be killed, so a chaos test runs
its own on a store directory it keeps: ``restart_broker`` SIGKILLs it and
starts a new one on the same store and port, as an operator restarting a
crashed broker would. ``Observer`` records the history from core-NATS
subscriptions (so it sees every publish, including ones JetStream dedup
drops) and the services' heartbeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
from nats.aio.msg import Msg

from shared.bus.core import Bus
from shared.client.cli.settings import StackSettings
from shared.contract.protocol import (
    Heartbeat,
    StepStarted,
    TaskSubmission,
    dead_letter_decoder,
    event_decoder,
    heartbeat_decoder,
    result_decoder,
    step_decoder,
)
from shared.embedded.launcher import ServiceProcess, Stack
from shared.embedded.natsserver import NatsServer
from tests.chaos.history import History
from tests.helpers import stream_messages, wait_for_value

__all__ = ["KILLABLE", "SCRIPTED", "ChaosCluster", "Observer", "chaos_settings", "submit_until_stored"]

KILLABLE = ("orchestrator", "researcher", "developer", "reviewer")  # the monitor is not on the task path
SCRIPTED = "tests.brains:ScriptedBrain"


def chaos_settings(url: str, prefix: str, tmp: Path, **overrides: object) -> StackSettings:
    """Short timeouts so a killed service's work comes back within seconds."""
    values: dict[str, object] = {
        "nats_url": url,
        "prefix": prefix,
        "ack_wait": 3.0,
        "heartbeat_interval": 0.5,
        "suspect_after": 1.2,
        "dead_after": 2.5,
        "step_deadline": 30.0,
        "tick_interval": 0.3,
        "drain_timeout": 5.0,
        "work_dir": tmp / "work",
        "index_path": tmp / "index.sqlite",
        "dedup_window": 300.0,
    }
    values.update(overrides)
    return StackSettings(**values)  # type: ignore[arg-type]


@dataclass
class Observer:
    """Fills a ``History`` from what goes over the bus, and tracks who still heartbeats."""

    bus: Bus
    history: History = field(default_factory=History)
    started: int = 0
    heartbeats: dict[str, tuple[float, Heartbeat]] = field(default_factory=dict)
    progress: asyncio.Event = field(default_factory=asyncio.Event)
    undecodable: list[str] = field(default_factory=list)

    async def start(self) -> None:
        s = self.bus.subjects
        await self.bus.nc.subscribe(s.step_result_all, cb=self._on_step)
        await self.bus.nc.subscribe(s.result_all, cb=self._on_result)
        await self.bus.nc.subscribe(s.heartbeat_all, cb=self._on_heartbeat)

    async def _on_step(self, msg: Msg) -> None:
        try:
            step = step_decoder.decode(msg.data)
        except msgspec.MsgspecError as exc:
            self.undecodable.append(f"{msg.subject}: {exc}")
            return
        if isinstance(step, StepStarted):
            self.history.saw_started(step)
            self.started += 1
            self.progress.set()

    async def _on_result(self, msg: Msg) -> None:
        try:
            self.history.saw_result(result_decoder.decode(msg.data))
        except msgspec.MsgspecError as exc:
            self.undecodable.append(f"{msg.subject}: {exc}")
        self.progress.set()

    async def _on_heartbeat(self, msg: Msg) -> None:
        with contextlib.suppress(msgspec.MsgspecError):
            hb = heartbeat_decoder.decode(msg.data)
            self.heartbeats[hb.instance_id] = (time.monotonic(), hb)

    async def wait_progress(self, timeout: float) -> None:
        """Until the next step start or result (or ``timeout``)."""
        self.progress.clear()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.progress.wait(), timeout)

    def fresh_heartbeat(self, instance: str, since: float) -> Heartbeat | None:
        seen = self.heartbeats.get(instance)
        return seen[1] if seen and seen[0] >= since else None

    async def collect(self) -> None:
        """Read what the events stream stored: every final result and every task's trace."""
        s = self.bus.subjects
        for res in await stream_messages(self.bus.js, s.stream_events, s.result_all, result_decoder):
            self.history.stored[res.task_id].append(res)
        traces: dict[str, list] = {}
        for ev in await stream_messages(self.bus.js, s.stream_events, f"{s.prefix}.events.>", event_decoder):
            traces.setdefault(ev.task_id, []).append(ev)
        self.history.events = traces
        letters = await stream_messages(
            self.bus.js, s.stream_dead_letters, s.dead_letter_all, dead_letter_decoder
        )
        for letter in letters:
            try:
                step = step_decoder.decode(letter.payload.encode())
            except msgspec.MsgspecError:
                continue  # not a step message
            self.history.saw_dead_letter(step)


@dataclass
class ChaosCluster:
    """A killable nats-server on a kept store, plus service processes that can be killed and replaced."""

    tmp: Path
    prefix: str
    server: NatsServer | None = None
    store: Path = field(init=False)
    port: int = -1
    stack: Stack | None = None
    kills: list[str] = field(default_factory=list)
    broker_restarts: int = 0

    def __post_init__(self) -> None:
        self.store = self.tmp / "nats-store"
        self.store.mkdir(parents=True, exist_ok=True)

    def start_broker(self) -> str:
        self.server = NatsServer(store_dir=self.store, port=self.port).start()
        assert self.server.port is not None
        self.port = self.server.port
        return self.server.url

    def kill_broker(self) -> None:
        """SIGKILL the broker (no clean shutdown, no flushed state beyond what the store has)."""
        assert self.server is not None and self.server.proc is not None
        self.server.proc.kill()
        self.server.proc.wait()
        self.server.proc = None
        self.broker_restarts += 1

    def services(
        self, settings: StackSettings, *, orchestrators: int = 2, agents: int = 2, **overrides: object
    ) -> Stack:
        self.stack = Stack(settings, log_dir=self.tmp / "logs")
        for _ in range(orchestrators):
            self.stack.add("orchestrator", **overrides)
        for role in ("researcher", "developer", "reviewer"):
            for _ in range(agents):
                self.stack.add(role, brain=SCRIPTED, **overrides)
        return self.stack

    def live(self) -> list[ServiceProcess]:
        assert self.stack is not None
        return [p for p in self.stack.processes if p.alive()]

    def died_alone(self) -> list[str]:
        """Services that exited without being killed: each one is a loop that died."""
        assert self.stack is not None
        return [
            f"{p.env['CADRE_INSTANCE_ID']} (exit {p.proc.returncode if p.proc else '?'})"
            for p in self.stack.processes
            if not p.alive() and p.env["CADRE_INSTANCE_ID"] not in self.kills
        ]

    def kill_and_replace(self, rng: random.Random, busy: set[str]) -> ServiceProcess:
        """SIGKILL one service (a busy agent when there is one, half of the time) and start a fresh one."""
        assert self.stack is not None
        live = [p for p in self.live() if p.name in KILLABLE]
        busy_live = [p for p in live if p.env.get("CADRE_INSTANCE_ID") in busy]
        victim = rng.choice(busy_live if busy_live and rng.random() < 0.5 else live)
        victim.kill()
        self.kills.append(victim.env["CADRE_INSTANCE_ID"])
        extra = {"brain": SCRIPTED} if victim.name != "orchestrator" else {}
        return self.stack.add(victim.name, **extra)

    def stop(self) -> None:
        if self.stack is not None:
            self.stack.stop(timeout=10)
        if self.server is not None:
            self.server.stop()

    def logs(self) -> str:
        out = []
        for log in sorted((self.tmp / "logs").glob("*.log")):
            out.append(f"----- {log.name} -----\n{log.read_text(errors='replace')[-3000:]}")
        return "\n".join(out)


async def submit_until_stored(bus: Bus, task: TaskSubmission, what: str = "submit") -> None:
    """Publish a task and retry until JetStream stores it (the broker may be down; dedup makes retries safe)."""
    from shared.contract.protocol import encode

    async def stored() -> bool:
        try:
            await bus.js.publish(
                bus.subjects.task_submit("client"),
                encode(task),
                headers={"Nats-Msg-Id": task.message_id},
                timeout=2,
            )
        except Exception:  # broker down or reconnecting: the next try publishes again
            return False
        return True

    await wait_for_value(stored, 60, interval=0.2, what=f"{what}: JetStream to store {task.task_id}")
