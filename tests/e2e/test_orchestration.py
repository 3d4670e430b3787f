"""The orchestrator end to end: real nats-server, real service processes, scripted brains."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from nats.js.errors import KeyNotFoundError

from shared.bus.core import Bus
from shared.contract.protocol import TaskSubmission, encode
from shared.embedded.launcher import Stack
from tests.helpers import await_result, feature_task, task_events, wait_for_value

SCRIPTED = "tests.brains:ScriptedBrain"


def start_stack(stack: Stack, **overrides: Any) -> None:
    stack.add("orchestrator", **overrides)
    for role in ("researcher", "developer", "reviewer"):
        stack.add(role, brain=SCRIPTED)


async def submit(bus: Bus, task: TaskSubmission) -> None:
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)


async def test_the_spec_feature_task_runs_all_seven_steps_in_trace_order(bus: Bus, stack: Stack) -> None:
    start_stack(stack)
    task = feature_task({"scores": [85, 98]})
    await submit(bus, task)
    result = await await_result(bus, task.task_id)
    assert result.status == "completed", result.reason
    assert result.approved
    plan_ids = [s.id for s in result.plan.steps]
    assert plan_ids == [
        "analyze",
        "design",
        "implement",
        "tests",
        "security_review",
        "performance",
        "final_review",
    ]
    done = [s.step_id for s in result.steps]
    assert done == [
        "analyze",
        "design",
        "implement",
        "tests",
        "security_review",
        "security_review.fix1",
        "security_review.review2",
        "performance",
        "final_review",
    ]
    assert result.score_history == [85, 98, 98]  # security review twice, final review once
    events = await task_events(bus, task.task_id)
    kinds = [e.kind for e in events]
    assert kinds[0] == "received" and kinds[1] == "planned" and kinds[-1] == "completed"
    assert [e.seq for e in events] == sorted(e.seq for e in events)
    delegations = [e.step_id for e in events if e.kind == "delegated"]
    assert delegations == [d for d in done if d != "design"]
    assert events[0].text == "[Orchestrator] Received task: Build user authentication API"
    assert any(e.text.startswith("[Orchestrator] → [Researcher]:") for e in events)
    assert "# Build user authentication API" in result.report_markdown


async def test_review_loop_that_never_approves_stops_at_the_cap(bus: Bus, stack: Stack) -> None:
    start_stack(stack, review_max_rounds=2)
    task = feature_task({"scores": [60, 70, 75, 80]})
    await submit(bus, task)
    result = await await_result(bus, task.task_id)
    assert result.status == "failed"
    assert "review cap reached" in result.reason
    assert result.score_history == [60, 70, 75]
    assert not result.approved


async def test_disputed_finding_is_resolved_by_policy_and_the_event_names_the_rule(
    bus: Bus, stack: Stack
) -> None:
    start_stack(stack)
    task = feature_task({"scores": [85, 98], "dispute": True})
    await submit(bus, task)
    result = await await_result(bus, task.task_id)
    assert result.status == "completed", result.reason
    assert len(result.conflicts) == 1
    conflict = result.conflicts[0]
    assert conflict.winner == "reviewer" and conflict.rule == "security > performance"
    assert "synchronous hashing" in conflict.developer_position
    events = await task_events(bus, task.task_id)
    resolved = [e for e in events if e.kind == "conflict_resolved"]
    assert len(resolved) == 1 and "security > performance" in resolved[0].text
    # the losing side was told: a must-fix step ran before the re-review
    assert "security_review.fix1.must" in [s.step_id for s in result.steps]


async def test_agent_hanging_past_deadline_is_reassigned_with_a_delay_event(bus: Bus, stack: Stack) -> None:
    stack.add("orchestrator", step_deadline=3.0)
    stack.add("researcher", brain=SCRIPTED)
    stack.add("reviewer", brain=SCRIPTED)
    stack.add("developer", brain=SCRIPTED)
    stack.add("developer", brain=SCRIPTED)
    task = feature_task({"scores": [95], "hang": {"step": "implement", "attempts": [1]}})
    await submit(bus, task)
    result = await await_result(bus, task.task_id, timeout=90)
    assert result.status == "completed", result.reason
    assert len(result.recoveries) == 1
    rec = result.recoveries[0]
    assert rec.step_id == "implement" and rec.new_attempt == 2 and "Timeout" in rec.reason
    implement = next(s for s in result.steps if s.step_id == "implement")
    assert implement.attempts == 2
    assert implement.instance_id != rec.failed_instance
    events = await task_events(bus, task.task_id)
    delayed = [e for e in events if e.kind == "delayed"]
    assert len(delayed) == 1 and "Re-assign task to a different agent instance" in delayed[0].text


async def test_a_failing_step_is_retried_then_succeeds(bus: Bus, stack: Stack) -> None:
    start_stack(stack)
    task = feature_task({"scores": [95], "fail": {"step": "analyze", "attempts": [1]}})
    await submit(bus, task)
    result = await await_result(bus, task.task_id)
    assert result.status == "completed", result.reason
    assert next(s for s in result.steps if s.step_id == "analyze").attempts == 2


async def test_a_step_that_keeps_failing_fails_the_task_with_a_clear_reason(bus: Bus, stack: Stack) -> None:
    start_stack(stack, max_attempts=2)
    task = feature_task({"fail": {"step": "analyze", "attempts": [1, 2, 3]}})
    await submit(bus, task)
    result = await await_result(bus, task.task_id)
    assert result.status == "failed"
    assert "analyze" in result.reason and "2 attempts" in result.reason


async def test_republished_task_runs_once_and_invalid_task_is_rejected(bus: Bus, stack: Stack) -> None:
    start_stack(stack)
    task = feature_task({"scores": [95]}, task_type="research")
    await submit(bus, task)
    await submit(bus, task)  # same message_id: JetStream dedup
    # beyond the dedup window a re-publish still maps to the same task id: the KV create refuses it
    await bus.js.publish(bus.subjects.task_submit("client"), encode(task))
    result = await await_result(bus, task.task_id)
    assert result.status == "completed"
    events = await task_events(bus, task.task_id)
    assert [e.kind for e in events].count("received") == 1

    await bus.js.publish(bus.subjects.task_submit("client"), b'{"message_id": "bad-1", "task": {}}')
    rejected = await await_result(bus, "task_bad-1")
    assert rejected.status == "rejected"
    assert "description" in rejected.reason
    unknown = feature_task(task_type="astrology")
    await submit(bus, unknown)
    rejected = await await_result(bus, unknown.task_id)
    assert rejected.status == "rejected" and "unknown task_type 'astrology'" in rejected.reason


async def test_a_finished_workflow_leaves_kv_after_its_retention_and_its_result_stays(
    bus: Bus, stack: Stack
) -> None:
    start_stack(stack, workflow_retention=0.5)
    task = feature_task({"scores": [95]}, task_type="research")
    await submit(bus, task)
    assert (await await_result(bus, task.task_id)).status == "completed"
    kv = await bus.workflows()

    async def purged() -> bool | None:
        try:
            await kv.get(task.task_id)
        except KeyNotFoundError:  # KeyDeletedError, raised for a purged key, is one
            return True
        return None

    await wait_for_value(purged, timeout=30, what="the finished workflow's KV key to be purged")
    # the trace and the final result live on the events stream, not in KV
    assert (await await_result(bus, task.task_id)).status == "completed"
    assert [e.kind for e in await task_events(bus, task.task_id)][-1] == "completed"


@pytest.mark.chaos
async def test_orchestrator_killed_mid_workflow_resumes_and_applies_each_step_once(
    bus: Bus, stack: Stack
) -> None:
    orch = stack.add("orchestrator")
    for role in ("researcher", "developer", "reviewer"):
        stack.add(role, brain=SCRIPTED)
    task = feature_task({"scores": [85, 98]})
    await submit(bus, task)

    async def three_delegated() -> bool:
        return sum(1 for e in await task_events(bus, task.task_id) if e.kind == "delegated") >= 3

    await wait_for_value(three_delegated, what="three delegations before the kill")
    orch.kill()
    stack.add("orchestrator", instance="orchestrator-2")
    result = await await_result(bus, task.task_id, timeout=90)
    assert result.status == "completed", result.reason
    ids = [s.step_id for s in result.steps]
    assert len(ids) == len(set(ids))
    assert all(s.attempts == 1 for s in result.steps)
    events = await task_events(bus, task.task_id)
    completions = [e.step_id for e in events if e.kind in ("step_completed", "review")]
    assert len(completions) == len(set(completions)), "each step applied once"


@pytest.mark.chaos
async def test_two_orchestrators_run_side_by_side_without_running_a_step_twice(
    bus: Bus, stack: Stack
) -> None:
    stack.add("orchestrator")
    stack.add("orchestrator")
    for role in ("researcher", "developer", "reviewer"):
        stack.add(role, brain=SCRIPTED)
    tasks = [feature_task({"scores": [85, 98]}) for _ in range(3)]
    for t in tasks:
        await submit(bus, t)
    for t in tasks:
        result = await await_result(bus, t.task_id, timeout=90)
        assert result.status == "completed", result.reason
        events = await task_events(bus, t.task_id)
        delegated = [(e.step_id, e.attempt) for e in events if e.kind == "delegated"]
        assert len(delegated) == len(set(delegated))
        assert all(s.attempts == 1 for s in result.steps)


@pytest.mark.chaos
async def test_item_past_max_deliver_is_taken_back_and_reassigned(bus: Bus, stack: Stack) -> None:
    # every instance that takes attempt 1 dies; after max_deliver=2 deliveries the broker gives up
    stack.settings = stack.settings.model_copy(update={"max_deliver": 2})
    stack.add("orchestrator")
    stack.add("researcher", brain=SCRIPTED)
    stack.add("reviewer", brain=SCRIPTED)
    for _ in range(3):
        stack.add("developer", brain="tests.brains:CrashingBrain")
    # the consumers are created by whoever starts first: make sure they carry max_deliver=2
    from shared.bus.core import ensure_topology

    await ensure_topology(bus.js, stack.settings)
    task = feature_task({"scores": [95], "die": {"step": "implement", "attempts": [1]}})
    await submit(bus, task)
    result = await await_result(bus, task.task_id, timeout=90)
    assert result.status == "completed", result.reason
    rec = result.recoveries[0]
    assert rec.step_id == "implement" and "MaxDeliver" in rec.reason


async def test_cancel_stops_the_task_and_the_agent_working_on_it(bus: Bus, stack: Stack) -> None:
    from shared.contract.protocol import CancelReply, CancelRequest, encode
    from tests.helpers import wait_for_value

    start_stack(stack)
    task = feature_task({"hang": {"step": "analyze", "attempts": [1]}})
    await submit(bus, task)

    async def started() -> bool:
        return any(e.kind == "step_started" for e in await task_events(bus, task.task_id))

    await wait_for_value(started, what="the researcher to start")
    reply = await bus.nc.request(
        bus.subjects.task_cancel("client"),
        encode(CancelRequest(task_id=task.task_id, reason="user changed their mind")),
        timeout=5,
    )
    answer = msgspec.json.decode(reply.data, type=CancelReply)
    assert answer.accepted
    result = await await_result(bus, task.task_id)
    assert result.status == "cancelled" and result.reason == "user changed their mind"

    async def agent_stopped() -> bool:
        from shared.contract.protocol import dead_letter_decoder
        from tests.helpers import stream_messages

        s = bus.subjects
        dead = await stream_messages(
            bus.js, s.stream_dead_letters, s.dead_letter("orchestrator"), dead_letter_decoder
        )
        return any("after the final event" in d.reason and "analyze" in d.reason for d in dead)

    await wait_for_value(agent_stopped, what="the researcher's cancelled result to be dead-lettered")
    events = await task_events(bus, task.task_id)
    assert events[-1].kind == "cancelled", "nothing is published for the task after its final event"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    again = await bus.nc.request(
        bus.subjects.task_cancel("client"), encode(CancelRequest(task_id="task_nope")), timeout=5
    )
    assert msgspec.json.decode(again.data, type=CancelReply).accepted is False
