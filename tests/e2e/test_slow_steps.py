"""Steps that outlast the stream's dedup window: nothing the orchestrator sent is sent again.

The orchestrator clears its outbox lazily (a published record leaves the state with the
task's next write) and relies on the stream's dedup window when a record is re-published.
A step that runs longer than that window (an LLM step takes minutes) must not turn the
previous transition's records into duplicates: no event twice, no work item twice (which
would run a step again).
"""

from __future__ import annotations

import pytest

from shared.bus.core import Bus
from shared.client.cli.settings import StackSettings
from shared.embedded.launcher import Stack
from tests.helpers import await_result, feature_task, task_events

SCRIPTED = "tests.brains:ScriptedBrain"
WINDOW = 1.0


@pytest.fixture
def settings(settings: StackSettings) -> StackSettings:
    # a dedup window far shorter than each step, and ticks (with a periodic resume every
    # ten) several times per step
    return settings.model_copy(update={"dedup_window": WINDOW, "tick_interval": 0.2})


async def test_steps_longer_than_the_dedup_window_send_each_event_and_work_item_once(
    bus: Bus, stack: Stack
) -> None:
    stack.add("orchestrator")
    stack.add("orchestrator")  # a second instance resumes what the first wrote
    for role in ("researcher", "developer", "reviewer"):
        stack.add(role, brain=SCRIPTED)
    task = feature_task({"scores": [98], "delay": 3 * WINDOW})
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    result = await await_result(bus, task.task_id, timeout=120)
    assert result.status == "completed", result.reason

    events = await task_events(bus, task.task_id)
    seqs = [e.seq for e in events]
    assert seqs == list(range(1, len(events) + 1)), seqs  # no event twice, none missing
    assert [s.step_id for s in result.steps] == [
        "analyze",
        "design",
        "implement",
        "tests",
        "security_review",
        "performance",
        "final_review",
    ]
    # no work item was delivered twice: each step ran once, none re-ran
    assert all(len(s.runs) == 1 for s in result.steps if s.runs), [(s.step_id, s.runs) for s in result.steps]
    assert not result.rerun_steps
