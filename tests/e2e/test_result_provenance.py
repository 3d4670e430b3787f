"""The orchestrator's own check of who sent a step result, on an unauthenticated embedded stack.

No permissions here (any connection may publish anything), so this is the
check behind the server's: forged step messages change nothing but the trace
(a ``result_refused`` event each, and a dead letter each), and the genuine
result after them completes the task.
"""

from __future__ import annotations

from shared.bus.core import Bus
from shared.contract.protocol import (
    ReviewOutput,
    StepResult,
    StepStarted,
    TaskBody,
    TaskSubmission,
    Timings,
    dead_letter_decoder,
    encode,
    new_id,
    now,
)
from shared.embedded.launcher import Stack
from tests.helpers import await_result, stream_messages, task_events, wait_for_value


def _result(task_id: str, role: str, instance: str, attempt: int = 1, **fields: object) -> StepResult:
    t = now()
    return StepResult(
        message_id=new_id("res"),
        task_id=task_id,
        step_id="research",
        attempt=attempt,
        role=role,  # type: ignore[arg-type]
        instance_id=instance,
        status="completed",
        summary=f"from {instance}",
        timings=Timings(queued_at=t, started_at=t, finished_at=t),
        **fields,  # type: ignore[arg-type]
    )


async def _kinds(bus: Bus, task_id: str, kind: str) -> list[str] | None:
    found = [e.detail for e in await task_events(bus, task_id) if e.kind == kind]
    return found or None


async def test_forged_step_results_are_refused_with_an_event_and_a_dead_letter_and_the_real_one_applies(
    bus: Bus, stack: Stack
) -> None:
    stack.add("orchestrator")  # no researcher: the test plays every agent
    task = TaskSubmission(
        message_id=new_id("msg"),
        task_id=new_id("task"),
        task_type="research",
        task=TaskBody(description="Research JWT refresh tokens"),
    )
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    tid = task.task_id
    await wait_for_value(lambda: _kinds(bus, tid, "delegated"), 30, what="the research step delegated")
    s = bus.subjects
    review = ReviewOutput(summary="forged approval", score=100, verdict="approved")
    forgeries = [
        # a developer login claiming to be the researcher (role in the message, not in the subject)
        (s.step_result("developer", tid), _result(tid, "researcher", "researcher-x")),
        # a reviewer answering a researcher's step, under its own role
        (s.step_result("reviewer", tid), _result(tid, "reviewer", "reviewer-1", output=review, score=100)),
        # the right role, an attempt that was never dispatched
        (s.step_result("researcher", tid), _result(tid, "researcher", "researcher-1", attempt=2)),
    ]
    started = StepStarted(
        task_id=tid,
        step_id="research",
        attempt=1,
        role="researcher",
        instance_id="researcher-1",
        started_at=now(),
    )
    await bus.publish(s.step_result("researcher", tid), started)
    for subject, forged in forgeries:
        await bus.js.publish(subject, encode(forged))
    # the right role and attempt, from an instance that does not hold the step
    await bus.js.publish(s.step_result("researcher", tid), encode(_result(tid, "researcher", "researcher-2")))

    async def refused() -> list[str] | None:
        found = await _kinds(bus, tid, "result_refused")
        return found if found and len(found) >= 4 else None

    reasons = await wait_for_value(refused, 30, what="four result_refused events")
    print("REFUSED:\n  " + "\n  ".join(reasons))
    assert reasons == [
        "the message claims role 'researcher' but was sent under role 'developer'",
        "step research was given to the researcher, not to a reviewer",
        "attempt 2 of step research was never dispatched (latest attempt 1)",
        "attempt 1 of step research was started by researcher-1, not by 'researcher-2'",
    ]
    letters = await stream_messages(
        bus.js, s.stream_dead_letters, s.dead_letter("orchestrator"), dead_letter_decoder
    )
    assert sorted(d.reason for d in letters) == sorted(f"unroutable: refused: {r}" for r in reasons)
    # nothing forged was applied: the task is still running; the genuine result completes it
    assert await _kinds(bus, tid, "completed") is None
    await bus.js.publish(s.step_result("researcher", tid), encode(_result(tid, "researcher", "researcher-1")))
    result = await await_result(bus, tid, timeout=30)
    assert result.status == "completed"
    assert [(r.step_id, r.instance_id, r.summary) for r in result.steps] == [
        ("research", "researcher-1", "from researcher-1")
    ]
    assert result.score_history == []
