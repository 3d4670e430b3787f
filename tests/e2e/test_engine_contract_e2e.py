"""The engine's promises with real services: honest retryability and visible re-runs.

Real nats-server, real orchestrator and agent processes with scripted brains.
"""

from __future__ import annotations

from pathlib import Path

from shared.bus.core import Bus
from shared.embedded.launcher import Stack
from tests.helpers import assert_eventually, await_result, feature_task, task_events, wait_for_value

SCRIPTED = "tests.brains:ScriptedBrain"


async def test_a_non_retryable_brain_error_fails_the_task_after_one_attempt(bus: Bus, stack: Stack) -> None:
    stack.add("orchestrator", max_attempts=3)
    for role in ("researcher", "developer", "reviewer"):
        stack.add(role, brain=SCRIPTED)
    task = feature_task({"fail": {"step": "analyze", "attempts": [1], "non_retryable": True}})
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    result = await await_result(bus, task.task_id)
    assert result.status == "failed"
    assert "not retryable" in result.reason and "a capability this brain lacks" in result.reason
    (analyze,) = [s for s in result.steps if s.step_id == "analyze"]
    assert analyze.attempts == 1 and not result.recoveries


async def test_a_step_rerun_by_a_restarted_instance_with_the_same_id_is_traced_and_reported(
    bus: Bus, stack: Stack, tmp_path: Path
) -> None:
    stack.add("orchestrator")
    stack.add("researcher", brain=SCRIPTED)
    stack.add("reviewer", brain=SCRIPTED)
    developer = stack.add("developer", instance="developer-x", brain="tests.brains:CrashingBrain")
    once, gate = tmp_path / "died-once", tmp_path / "die-now"
    die = {"step": "implement", "attempts": [1], "once_file": str(once), "gate_file": str(gate)}
    task = feature_task({"scores": [95], "die": die})
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)

    async def implement_started() -> bool:
        return any(
            e.kind == "step_started" and e.step_id == "implement"
            for e in await task_events(bus, task.task_id)
        )

    await wait_for_value(implement_started, timeout=60, what="the developer to start implement")
    gate.touch()
    await assert_eventually(lambda: once.exists() and not developer.alive(), timeout=60, what="the crash")
    # the container comes back with the same instance id; the broker redelivers attempt 1 to it
    stack.add("developer", instance="developer-x", brain="tests.brains:CrashingBrain")
    result = await await_result(bus, task.task_id, timeout=90)
    assert result.status == "completed", result.reason

    (implement,) = [s for s in result.steps if s.step_id == "implement"]
    assert implement.attempts == 1
    assert [(r.attempt, r.instance_id) for r in implement.runs] == [(1, "developer-x"), (1, "developer-x")]
    assert [r.outcome for r in implement.runs] == ["no_result", "applied"]
    assert implement.applied_run == implement.runs[1].run_id
    assert "implement" in result.rerun_steps
    started = [
        e
        for e in await task_events(bus, task.task_id)
        if e.kind == "step_started" and e.step_id == "implement"
    ]
    assert len(started) == 2 and "re-run" in started[1].text
