"""What a workflow costs the orchestrator in KV operations (counted, never timed).

The orchestrator counts its workflow reads, writes and revision conflicts in
``$SRV.STATS`` (``workflow_io``). These tests read the counts after real tasks,
with a real orchestrator and scripted agents as processes.
"""

from __future__ import annotations

import contextlib
from typing import Any

import msgspec
from nats.errors import TimeoutError as NatsTimeout

from shared.bus.core import Bus
from shared.embedded.launcher import Stack
from tests.helpers import await_result, feature_task, task_events, wait_for_value

SCRIPTED = "tests.brains:ScriptedBrain"
AGENT_STEPS = 6  # the feature plan's 7 steps less "design", which the orchestrator does itself


async def orchestrator_stats(bus: Bus) -> dict[str, Any] | None:
    """The ``cancel`` endpoint's data of this test's orchestrator (found by its prefix)."""
    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox)
    await bus.nc.publish("$SRV.STATS.cadre-orchestrator", b"", reply=inbox)
    found = None
    with contextlib.suppress(NatsTimeout, TimeoutError):
        while found is None:
            m = await sub.next_msg(timeout=0.5)
            body = msgspec.json.decode(m.data) if m.data else {}
            if body.get("metadata", {}).get("prefix") == bus.subjects.prefix:
                found = next(ep["data"] for ep in body["endpoints"] if ep["name"] == "cancel")
    await sub.unsubscribe()
    return found


async def test_a_step_costs_one_workflow_write_and_no_read_with_one_orchestrator(
    bus: Bus, stack: Stack
) -> None:
    # ticks far apart: no periodic resume (which re-reads each key) runs during the test
    stack.add("orchestrator", tick_interval=30.0)
    for role in ("researcher", "developer", "reviewer"):
        stack.add(role, brain=SCRIPTED)
    tasks = [feature_task({"scores": [95]}) for _ in range(3)]
    for task in tasks:
        await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    for task in tasks:
        result = await await_result(bus, task.task_id)
        assert result.status == "completed", result.reason
        assert len(result.steps) == 7

    async def settled() -> dict[str, Any] | None:
        stats = await orchestrator_stats(bus)
        if stats and stats["open_tasks"] == 0 and stats["held_started"] == 0:
            return stats
        return None

    stats = await wait_for_value(settled, what="the orchestrator with every task settled")
    io = stats["workflow_io"]
    n = len(tasks)
    assert io["started_applied"] == n * AGENT_STEPS, io  # every started notice went into a write
    alone = io.get("started_written_alone", 0)  # notices whose step outlasted the hold
    # per task: the accepted state, one write per step result (its notice rides along), the
    # final outbox clear. Before notices were held, each notice was a write of its own (14).
    assert io["writes"] <= n * (1 + AGENT_STEPS + 1) + alone, io
    assert io.get("reads", 0) == 0, io  # every step message was decided on the cached state
    assert io.get("conflicts", 0) == 0, io
    for task in tasks:
        events = await task_events(bus, task.task_id)
        started = [e.step_id for e in events if e.kind == "step_started"]
        assert len(started) == AGENT_STEPS and len(set(started)) == AGENT_STEPS, started
        assert [e.seq for e in events] == list(range(1, len(events) + 1))
