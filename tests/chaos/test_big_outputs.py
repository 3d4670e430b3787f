"""A step whose outputs exceed the 1 MiB message limit.

The output goes to the object store by reference and the task completes; a
result that cannot be made to fit ends its task with one clear final result
in bounded time, and the agent goes on taking work.
"""

from __future__ import annotations

import msgspec
import pytest

from shared.bus.core import Bus
from shared.contract.protocol import ResearchOutput, TaskSubmission
from shared.embedded.launcher import Stack
from tests.helpers import await_result, feature_task

pytestmark = pytest.mark.chaos

BIG = "tests.chaos.brains:BigOutputBrain"
MIB = 1024 * 1024


def start(stack: Stack, **orchestrator: object) -> None:
    stack.add("orchestrator", **orchestrator)
    for role in ("researcher", "developer", "reviewer"):
        stack.add(role, brain=BIG)


def task(task_type: str, big: dict, files: bool = False) -> TaskSubmission:
    sub = feature_task({"scores": [95], "big": big}, task_type=task_type)
    if files:
        data = {**sub.task.input_data, "files": {"app.py": "VALUE = 1\n"}}
        sub = msgspec.structs.replace(sub, task=msgspec.structs.replace(sub.task, input_data=data))
    return sub


async def submit(bus: Bus, sub: TaskSubmission) -> None:
    await bus.publish(bus.subjects.task_submit("client"), sub, msg_id=sub.message_id)


@pytest.mark.timeout(300)
async def test_a_research_step_with_two_mebibytes_of_output_completes_with_the_whole_output_stored(
    bus: Bus, stack: Stack
) -> None:
    start(stack)
    sub = task("research", {"kb": 2048, "field": "passages"})
    await submit(bus, sub)
    result = await await_result(bus, sub.task_id, timeout=120)
    assert result.status == "completed", result.reason
    record = next(s for s in result.steps if s.step_id == "research")
    ref = getattr(record, "output_ref", None)
    assert ref is not None, "a 2 MiB output is kept by reference"
    data = await bus.get_artifact(ref)
    assert len(data) > 2 * MIB
    full = msgspec.json.decode(data, type=ResearchOutput)
    assert sum(len(p.text) for p in full.passages) >= 2 * MIB
    assert len(msgspec.json.encode(result)) < MIB


@pytest.mark.timeout(420)
@pytest.mark.parametrize(
    ("task_type", "big", "files"),
    [
        ("research", {"kb": 2048, "field": "summary", "steps": ["research"]}, False),
        ("review", {"kb": 2048, "field": "issues", "steps": ["security_review"]}, True),
    ],
    ids=["a-2MiB-summary-line", "2MiB-of-findings"],
)
async def test_a_result_that_cannot_fit_in_a_message_ends_its_task_once_and_the_agent_keeps_working(
    bus: Bus, stack: Stack, task_type: str, big: dict, files: bool
) -> None:
    start(stack, max_attempts=2)
    sub = task(task_type, big, files)
    await submit(bus, sub)
    result = await await_result(bus, sub.task_id, timeout=300)
    # one attempt, not MaxDeliver re-runs: sending it again cannot make it smaller
    assert result.status == "failed", result.status
    assert "result too large" in result.reason and "max_payload" in result.reason, result.reason
    record = next(s for s in result.steps if s.step_id == big["steps"][0])
    assert record.attempts == 1 and len(record.runs) == 1, (record.attempts, record.runs)
    # the agents are alive and still take work
    assert all(p.alive() for p in stack.processes), [p.name for p in stack.processes if not p.alive()]
    after = task("research", {})
    await submit(bus, after)
    assert (await await_result(bus, after.task_id, timeout=120)).status == "completed"
