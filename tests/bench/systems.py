"""The systems under comparison, each started on 127.0.0.1 with its own servers and stopped after.

Every system offers the same three things: ``run(n)`` submits ``n`` copies of
the spec's feature task at once and returns each one's latency (submit to
final result); ``processes()`` names every process it runs (so its CPU and RSS
can be charged to it); ``stop()``.

- :class:`Floor`: the bare nats-py chain (``tests/bench/floor.py``).
- :class:`CadreSystem`: Cadre's real service processes with scripted no-op brains.
- :class:`CelerySystem`: Celery prefork workers, Redis as broker and result backend.
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import nats

from shared.bus.core import Bus
from shared.client.cli.settings import StackSettings
from shared.contract.protocol import encode, result_decoder
from shared.embedded.launcher import Stack
from shared.embedded.natsserver import NatsServer
from tests.bench import floor
from tests.helpers import feature_task

__all__ = ["CadreSystem", "CelerySystem", "Floor", "System", "BenchError"]

_ROOT = Path(__file__).resolve().parents[2]
_RESULT_TIMEOUT = 120.0


class BenchError(RuntimeError):
    """A system did not do what it is measured doing (its result says why)."""


class System:
    """What the benchmark drives."""

    name: str

    async def start(self) -> None: ...
    async def run(self, n: int, delay: float = 0.0) -> list[float]: ...
    def processes(self) -> dict[int, str]: ...
    async def stop(self) -> None: ...


class _Waiter:
    """Final results by task id, from one core subscription on the result subjects."""

    def __init__(self) -> None:
        self.pending: dict[str, tuple[float, asyncio.Future[Any]]] = {}

    def expect(self, task_id: str) -> asyncio.Future[Any]:
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.pending[task_id] = (time.perf_counter(), fut)
        return fut

    def arrived(self, task_id: str, value: Any) -> None:
        entry = self.pending.pop(task_id, None)
        if entry is not None and not entry[1].done():
            entry[1].set_result((time.perf_counter() - entry[0], value))


class Floor(System):
    """The spec's chain on bare nats-py: one orchestrator and one agent per role, separate processes."""

    def __init__(self, log_dir: Path) -> None:
        self.name = "floor"
        self.log_dir = log_dir
        self.prefix = "floor"
        self.server = NatsServer()
        self.procs: dict[int, str] = {}
        self._popen: list[subprocess.Popen[bytes]] = []
        self._waiter = _Waiter()

    async def start(self) -> None:
        self.server.start()
        self.procs[self.server.proc.pid] = "nats-server"  # type: ignore[union-attr]
        self.nc = await nats.connect(self.server.url, name="bench-floor")
        self.js = self.nc.jetstream()
        await floor.provision(self.js, self.prefix)

        async def on_result(msg: Any) -> None:
            self._waiter.arrived(msg.subject.rsplit(".", 1)[1], msg.data)

        await self.nc.subscribe(floor.result_subject(self.prefix), cb=on_result)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for role in ("orchestrator", *floor.ROLES):
            log = open(self.log_dir / f"floor-{role}.log", "ab")  # noqa: SIM115 - the child keeps it
            p = subprocess.Popen(
                [sys.executable, "-m", "tests.bench.floor", role, self.server.url, self.prefix],
                cwd=_ROOT,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
            log.close()
            self._popen.append(p)
            self.procs[p.pid] = role
        await self.run(1)  # ready once a whole chain goes through

    async def run(self, n: int, delay: float = 0.0) -> list[float]:
        if delay:
            raise BenchError("the floor has no scripted step time")
        futs = []
        for _ in range(n):
            task = feature_task({"scores": [95]})
            futs.append(self._waiter.expect(task.task_id))
            await self.js.publish(floor.submit_subject(self.prefix), encode(task))
        done = await asyncio.wait_for(asyncio.gather(*futs), _RESULT_TIMEOUT)
        return [latency for latency, _ in done]

    def processes(self) -> dict[int, str]:
        return dict(self.procs)

    async def stop(self) -> None:
        await _terminate(self._popen)
        if getattr(self, "nc", None) is not None:
            await self.nc.close()
        self.server.stop()


class CadreSystem(System):
    """Cadre's orchestrator and agents as real processes (``copies`` of each) with scripted brains."""

    def __init__(self, copies: int, work_dir: Path) -> None:
        self.name = f"cadre{copies}x"
        self.copies = copies
        self.work_dir = work_dir
        self.server = NatsServer()
        self._waiter = _Waiter()

    async def start(self) -> None:
        self.server.start()
        self.settings = StackSettings(
            nats_url=self.server.url,
            prefix=f"b{uuid.uuid4().hex[:8]}",
            work_dir=self.work_dir / "work",
            index_path=self.work_dir / "index.sqlite",
        )
        self.bus = await Bus.open(self.settings, f"bench-{self.name}")  # creates the topology

        async def on_result(msg: Any) -> None:
            result = result_decoder.decode(msg.data)
            self._waiter.arrived(result.task_id, result)

        await self.bus.nc.subscribe(self.settings.subjects.result_all, cb=on_result)
        self.stack = Stack(self.settings, log_dir=self.work_dir / "logs")
        for i in range(self.copies):
            self.stack.add("orchestrator", instance=f"orchestrator-{i + 1}")
            for role in ("researcher", "developer", "reviewer"):
                self.stack.add(role, brain="tests.brains:ScriptedBrain")
        await self.run(1)

    async def run(self, n: int, delay: float = 0.0) -> list[float]:
        script: dict[str, Any] = {"scores": [95]}
        if delay:
            script["delay"] = delay
        futs = []
        for _ in range(n):
            task = feature_task(script)
            futs.append(self._waiter.expect(task.task_id))
            await self.bus.publish(self.settings.subjects.task_submit("client"), task, msg_id=task.message_id)
        done = await asyncio.wait_for(asyncio.gather(*futs), _RESULT_TIMEOUT)
        for _, result in done:
            steps = [s.step_id for s in result.steps]
            if result.status != "completed" or len(steps) != 7:
                raise BenchError(
                    f"{self.name}: task {result.task_id} {result.status} ({result.reason}): {steps}"
                )
        return [latency for latency, _ in done]

    def processes(self) -> dict[int, str]:
        out = {self.server.proc.pid: "nats-server"}  # type: ignore[union-attr]
        for p in self.stack.processes:
            out[p.pid] = p.env["CADRE_INSTANCE_ID"]
        return out

    async def stop(self) -> None:
        if getattr(self, "stack", None) is not None:
            await asyncio.to_thread(self.stack.stop, 15)
        if getattr(self, "bus", None) is not None:
            await self.bus.close()
        self.server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CelerySystem(System):
    """Celery 5 prefork workers (``-c concurrency``) with a redis-server of its own."""

    def __init__(self, log_dir: Path, concurrency: int = 3) -> None:
        self.name = f"celery-c{concurrency}"
        self.log_dir = log_dir
        self.concurrency = concurrency
        self._popen: list[subprocess.Popen[bytes]] = []
        self.procs: dict[int, str] = {}
        # Celery's client API blocks; one thread keeps its result consumer to itself
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="celery-client")

    async def start(self) -> None:
        if importlib.util.find_spec("celery") is None:
            raise BenchError("Celery is not installed: pip install -e '.[bench]'")
        redis_bin = shutil.which("redis-server")
        if redis_bin is None:
            raise BenchError(
                "redis-server is not installed: deploy/scripts/system-packages.sh bench (Debian package)"
            )
        port = _free_port()
        self.url = f"redis://127.0.0.1:{port}/0"
        self.log_dir.mkdir(parents=True, exist_ok=True)
        redis = subprocess.Popen(
            [redis_bin, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"],
            stdout=open(self.log_dir / "redis.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        self._popen.append(redis)
        self.procs[redis.pid] = "redis-server"
        env = {"CADRE_BENCH_REDIS_URL": self.url}
        worker = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "tests.bench.celery_app", "worker", "--pool=prefork"]
            + [f"--concurrency={self.concurrency}", "--without-heartbeat", "--without-gossip"]
            + ["--without-mingle", "--loglevel=WARNING"],
            cwd=_ROOT,
            env={**os.environ, **env},
            stdout=open(self.log_dir / "celery-worker.log", "ab"),  # noqa: SIM115
            stderr=subprocess.STDOUT,
        )
        self._popen.append(worker)
        self.procs[worker.pid] = "celery-worker"
        os.environ["CADRE_BENCH_REDIS_URL"] = self.url  # before the client imports the app
        await asyncio.get_running_loop().run_in_executor(self._pool, self._client_setup)
        await self.run(1)

    def _client_setup(self) -> None:
        from tests.bench import celery_app

        celery_app.app.conf.broker_url = self.url
        celery_app.app.conf.result_backend = self.url
        self._app = celery_app

    def _run(self, n: int) -> list[float]:
        task = msgspec.to_builtins(feature_task({"scores": [95]}))
        started = []
        for _ in range(n):
            started.append((time.perf_counter(), self._app.feature_chain(task).apply_async()))
        out = []
        for t0, res in started:
            value = res.get(timeout=_RESULT_TIMEOUT)
            out.append(time.perf_counter() - t0)
            if len(value["done"]) != 7:
                raise BenchError(f"celery chain ran {value['done']}")
        return out

    async def run(self, n: int, delay: float = 0.0) -> list[float]:
        if delay:
            raise BenchError("the Celery chain has no scripted step time")
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._run, n)

    def processes(self) -> dict[int, str]:
        return dict(self.procs)

    async def stop(self) -> None:
        await _terminate(self._popen)
        self._pool.shutdown(wait=False, cancel_futures=True)


async def _terminate(popens: list[subprocess.Popen[bytes]], timeout: float = 15.0) -> None:
    for p in reversed(popens):
        if p.poll() is None:
            p.terminate()

    def wait_all() -> None:
        for p in popens:
            try:
                p.wait(timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()

    await asyncio.to_thread(wait_all)
