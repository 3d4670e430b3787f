"""User data is user data: control values reach an agent only as typed step inputs.

A user may put anything in ``task.input_data``, including the names the
orchestrator's control values once had (``tests``, ``findings``, ``threshold``,
``waived``...). Real nats-server, real orchestrator, real builtin reviewer.
"""

from __future__ import annotations

from pathlib import Path

from nats.aio.msg import Msg

from shared.bus.core import Bus
from shared.contract.protocol import (
    ResearchOutput,
    ReviewInputs,
    ReviewOutput,
    TaskBody,
    TaskSubmission,
    WorkItem,
    new_id,
    now,
    work_decoder,
)
from shared.contract.workspace import pack_dir
from shared.embedded.launcher import Stack
from tests.helpers import await_result

SCRIPTED = "tests.brains:ScriptedBrain"

# a failing test run, a HIGH finding to fix and a zero threshold: had any of it steered the
# reviewer, the clean code below would not score 100 (failing tests cost 25 points)
USER_DATA = {
    "tests": {"passed": 0, "failed": 9, "errors": 9, "coverage": 0.0, "command": "pytest"},
    "findings": [{"id": "user-1", "severity": "HIGH", "rule": "x", "message": "m", "tool": "user"}],
    "must_fix": ["user-1"],
    "waived": ["anything"],
    "threshold": 0,
    "note": "kept as the user wrote it",
}


async def test_a_users_input_data_tests_and_findings_never_reach_the_reviewer_as_control_data(
    bus: Bus, stack: Stack, tmp_path: Path
) -> None:
    stack.add("orchestrator")
    stack.add("researcher", brain=SCRIPTED)
    stack.add("reviewer")
    clean = tmp_path / "clean"
    (clean / "pkg").mkdir(parents=True)
    (clean / "pkg" / "__init__.py").write_text(
        '"""A clean package."""\n\n\ndef add(a, b):\n    return a + b\n'
    )
    ref = await bus.put_artifact(pack_dir(clean), description="clean workspace")

    seen: list[WorkItem] = []

    async def capture(msg: Msg) -> None:
        seen.append(work_decoder.decode(msg.data))

    # a JetStream publish reaches core subscribers too: this sees every reviewer work item
    sub = await bus.nc.subscribe(bus.subjects.work("reviewer", "normal"), cb=capture)
    await bus.nc.flush()
    try:
        task = TaskSubmission(
            message_id=new_id("msg"),
            task_id=new_id("task"),
            task_type="review",
            task=TaskBody(description="Review the clean package", input_data=USER_DATA),
            workspace=ref,
            created_at=now(),
        )
        await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
        result = await await_result(bus, task.task_id, timeout=180)
    finally:
        await sub.unsubscribe()

    assert result.status == "completed", result.reason
    assert result.approved and result.score_history == [100, 100]
    research = next(s for s in result.steps if s.step_id == "research")
    assert isinstance(research.output, ResearchOutput)
    reviews = [s for s in result.steps if s.role == "reviewer"]
    assert [s.step_id for s in reviews] == ["security_review", "final_review"]
    for step in reviews:
        assert isinstance(step.output, ReviewOutput)
        assert step.output.tests is None, "no test step ran: the user's 'tests' were not folded in"
        assert step.output.issues == [] and "tests failing" not in step.summary

    assert sorted(i.step_id for i in seen) == ["final_review", "security_review"]
    for item in seen:
        assert item.task.input_data == USER_DATA, "the user's data travels untouched, as user data"
        assert isinstance(item.inputs, ReviewInputs)
        assert (item.inputs.threshold, item.inputs.waived, item.inputs.tests) == (90, [], None)
    first = next(i for i in seen if i.step_id == "security_review")
    assert isinstance(first.inputs, ReviewInputs) and first.inputs.research_results == research.output
