"""The component rows of ``make bench`` (ours vs a baseline, as ratios).

1. Wire codec: msgspec typed encode+decode of a WorkItem vs stdlib ``json`` with dicts.
2. Throughput: research tasks end to end (real nats-server, real processes,
   scripted brains) with 1 vs 2 researcher instances, each step taking 0.2 s.
3. Memory: resident size of an idle agent process vs a bare Python interpreter.
4. Research index: the check that reuses a built index vs a full build over every
   installed distribution plus ``docs/knowledge/`` (what a researcher pays at start).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import timeit
import uuid
from pathlib import Path

import msgspec

from services.researcher.builtin import KNOWLEDGE_DIR
from shared.bus.core import Bus
from shared.client.cli.settings import StackSettings
from shared.contract.protocol import (
    FixInputs,
    Issue,
    TaskBody,
    TaskSubmission,
    WorkItem,
    encode,
    new_id,
    now,
    work_decoder,
)
from shared.embedded.launcher import Stack
from shared.embedded.natsserver import NatsServer
from shared.tools.research_index import ResearchIndex
from tests.bench.procs import rss_kib
from tests.helpers import await_result, wait_for_value

__all__ = ["micro_rows"]


def _codec() -> tuple[float, float]:
    item = WorkItem(
        message_id="m",
        to_agent="developer",
        task_type="fix",
        context={"project": "auth-api", "language": "python"},
        task=TaskBody(description="Fix", requirements=["a", "b"]),
        task_id="t",
        step_id="s",
        deadline=1.0,
        created_at=1.0,
        inputs=FixInputs(
            findings=[
                Issue(id=str(i), severity="LOW", rule="ruff:F401", message="unused", tool="ruff")
                for i in range(20)
            ]
        ),
    )
    as_dict = msgspec.to_builtins(item)
    n = 20000
    fast = timeit.timeit(lambda: work_decoder.decode(encode(item)), number=n) / n
    slow = timeit.timeit(lambda: json.loads(json.dumps(as_dict))["inputs"], number=n) / n
    return fast, slow


async def _throughput(url: str, researchers: int, tasks: int, work_dir: Path) -> float:
    settings = StackSettings(
        nats_url=url, prefix=f"b{uuid.uuid4().hex[:8]}", work_dir=work_dir, heartbeat_interval=1.0
    )
    bus = await Bus.open(settings, "bench")
    stack = Stack(settings)
    stack.add("orchestrator")
    for _ in range(researchers):
        stack.add("researcher", brain="tests.brains:ScriptedBrain")
    try:
        subs = [
            TaskSubmission(
                message_id=new_id("m"),
                task_id=new_id("task"),
                task_type="research",
                task=TaskBody(description="q", input_data={"script": {"delay": 0.2}}),
                created_at=now(),
            )
            for _ in range(tasks)
        ]
        # warm-up: wait until the stack answers one task
        warm = TaskSubmission(
            message_id=new_id("m"),
            task_id=new_id("task"),
            task_type="research",
            task=TaskBody(description="w"),
        )
        await bus.publish(settings.subjects.task_submit("client"), warm, msg_id=warm.message_id)
        await await_result(bus, warm.task_id, timeout=60)
        t0 = time.perf_counter()
        for s in subs:
            await bus.publish(settings.subjects.task_submit("client"), s, msg_id=s.message_id)
        for s in subs:
            await await_result(bus, s.task_id, timeout=120)
        return tasks / (time.perf_counter() - t0)
    finally:
        await asyncio.to_thread(stack.stop)
        await bus.close()


async def _memory(url: str, work_dir: Path) -> tuple[int, int]:
    settings = StackSettings(nats_url=url, prefix=f"b{uuid.uuid4().hex[:8]}", work_dir=work_dir)
    stack = Stack(settings)
    agent = stack.add("researcher", brain="tests.brains:ScriptedBrain")
    bare = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        bus = await Bus.open(settings, "bench-mem")
        # ready when its micro endpoint answers
        subject = settings.subjects.agent_status("researcher", agent.env["CADRE_INSTANCE_ID"])

        async def answers() -> bool:
            try:
                await bus.nc.request(subject, b"", timeout=0.2)
            except Exception:
                return False
            return True

        await wait_for_value(answers, 30, what="the idle agent to answer")
        await bus.close()
        return rss_kib(agent.pid), rss_kib(bare.pid)
    finally:
        bare.kill()
        await asyncio.to_thread(stack.stop)


def _index(work_dir: Path) -> tuple[float, float, dict[str, float]]:
    ix = ResearchIndex(work_dir / "bench-index.sqlite", [KNOWLEDGE_DIR], include_installed=True)
    t0 = time.perf_counter()
    assert ix.ensure(), "a fresh index path builds"
    build = time.perf_counter() - t0
    t0 = time.perf_counter()
    assert not ix.ensure(), "an unchanged corpus reuses the index"
    cached = time.perf_counter() - t0
    return cached, build, ix.stats()


async def micro_rows(tmp: Path) -> list[tuple[str, str, str, str]]:
    """(measure, ours, baseline, ratio) for the codec, research scaling, RSS and index rows."""
    with NatsServer() as server:
        fast, slow = _codec()
        one = await _throughput(server.url, 1, 20, tmp)
        two = await _throughput(server.url, 2, 20, tmp)
        agent_kb, bare_kb = await _memory(server.url, tmp)
        cached, build, stats = _index(tmp)
    return [
        (
            "codec: msgspec typed vs json+dict (µs/msg)",
            f"{fast * 1e6:.2f}",
            f"{slow * 1e6:.2f}",
            f"{slow / fast:.1f}x faster",
        ),
        (
            "research tasks/s: 2 vs 1 researcher (0.2 s steps)",
            f"{two:.2f}",
            f"{one:.2f}",
            f"{two / one:.2f}x",
        ),
        (
            "RSS: idle agent vs bare python (MiB)",
            f"{agent_kb / 1024:.1f}",
            f"{bare_kb / 1024:.1f}",
            f"{agent_kb / bare_kb:.1f}x",
        ),
        (
            f"research index: reuse vs build of {stats['packages']:.0f} dists (ms)",
            f"{cached * 1e3:.1f}",
            f"{build * 1e3:.1f}",
            f"{build / cached:.0f}x faster",
        ),
    ]
