"""What an agent puts on the wire: large outputs by reference, retryability, one run id per run.

Real nats-server, a real agent process with the scripted brain.
"""

from __future__ import annotations

from shared.bus.core import Bus
from shared.bus.outputs import INLINE_OUTPUT_LIMIT, output_decoder
from shared.contract.protocol import DevelopmentOutput, StepResult, StepStarted, encode
from shared.contract.workspace import pack_files
from shared.embedded.launcher import Stack
from tests.helpers import StepFeed, make_item

SCRIPTED = "tests.brains:ScriptedBrain"


async def test_a_large_output_travels_as_a_reference_with_a_short_copy_inline(bus: Bus, stack: Stack) -> None:
    stack.add("developer", brain=SCRIPTED)
    ws = await bus.put_artifact(pack_files({"pkg/mod_000.py": "VALUE = 0\n"}))
    item = make_item(
        "developer",
        "fix",
        "fix1",
        task_id="task_big",
        description="fix everything",
        input_data={"script": {"diff_kb": 256}},
        workspace=ws,
    )
    await bus.publish(bus.subjects.work("developer", "normal"), item)
    feed = StepFeed(bus)
    try:
        result = await feed.result("fix1")
        (started,) = await feed.wait(lambda m: isinstance(m, StepStarted), "the started notice")
    finally:
        await feed.close()
    assert result.status == "completed" and result.output_ref is not None
    assert isinstance(result.output, DevelopmentOutput)
    assert len(encode(result.output)) <= INLINE_OUTPUT_LIMIT
    assert len(result.output.changes) == 32 and all(c.diff == "" for c in result.output.changes)
    full = output_decoder.decode(await bus.get_artifact(result.output_ref))
    assert isinstance(full, DevelopmentOutput)
    assert sum(len(c.diff) for c in full.changes) > INLINE_OUTPUT_LIMIT
    assert result.run_id and result.run_id == started.run_id


async def test_a_non_retryable_brain_error_is_marked_on_the_failed_result(bus: Bus, stack: Stack) -> None:
    stack.add("developer", brain=SCRIPTED)
    script = {"fail": {"step": "impl", "attempts": [1], "non_retryable": True}}
    flaky = {"fail": {"step": "impl2", "attempts": [1]}}
    for step, data in (("impl", script), ("impl2", flaky)):
        item = make_item(
            "developer",
            "implementation",
            step,
            task_id="task_nr",
            description="x",
            input_data={"script": data},
        )
        await bus.publish(bus.subjects.work("developer", "normal"), item)
    feed = StepFeed(bus)
    try:
        found = await feed.wait(
            lambda m: isinstance(m, StepResult) and m.step_id == "impl2", "the flaky step's result"
        )
        await feed.result("impl")
    finally:
        await feed.close()
    by_step = {m.step_id: m for m in feed.messages if isinstance(m, StepResult)}
    assert by_step["impl"].status == "failed" and by_step["impl"].retryable is False
    assert "a capability this brain lacks" in (by_step["impl"].error or "")
    assert found[0].status == "failed" and found[0].retryable is True
