"""Big fix rounds end with a result: the workflow state holds references, not diffs.

Real nats-server, real orchestrator and agent processes (scripted brains that
rewrite a generated workspace with many files); the diffs of the fix rounds
add up to more than the server's 1 MiB message limit.
"""

from __future__ import annotations

import io
import tarfile

import msgspec

from shared.bus.core import Bus
from shared.bus.outputs import output_decoder
from shared.contract.protocol import DevelopmentOutput, encode
from shared.contract.workspace import pack_files
from shared.embedded.launcher import Stack
from tests.helpers import await_result, feature_task, task_events

SCRIPTED = "tests.brains:ScriptedBrain"
MIB = 1024 * 1024


async def test_fix_rounds_with_more_than_a_mebibyte_of_diffs_end_with_a_result_and_a_workspace(
    bus: Bus, stack: Stack
) -> None:
    stack.add("orchestrator")
    for role in ("researcher", "developer", "reviewer"):
        stack.add(role, brain=SCRIPTED)
    files = {f"pkg/mod_{n:03d}.py": f"VALUE = {n}\n" for n in range(80)}
    workspace = await bus.put_artifact(pack_files(files), description="generated workspace")
    task = msgspec.structs.replace(
        feature_task({"scores": [40, 55, 70, 95], "diff_kb": 512}, task_type="review"), workspace=workspace
    )
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    result = await await_result(bus, task.task_id, timeout=180)

    assert result.status == "completed", result.reason
    assert result.score_history == [40, 55, 70, 95, 98]
    assert len(encode(result)) < MIB // 4, "the final result stays far below the message limit"

    fixes = [s for s in result.steps if s.task_type == "fix"]
    assert [s.step_id for s in fixes] == [f"security_review.fix{n}" for n in (1, 2, 3)]
    total_diff = 0
    for step in fixes:
        assert step.output_ref is not None, f"{step.step_id} kept its full output inline"
        assert isinstance(step.output, DevelopmentOutput)
        assert step.output.changes and all(c.diff == "" for c in step.output.changes)
        full = output_decoder.decode(await bus.get_artifact(step.output_ref))
        assert isinstance(full, DevelopmentOutput)
        assert len(full.changes) == len(step.output.changes) == 64
        total_diff += sum(len(c.diff) for c in full.changes)
    assert total_diff > MIB, f"the fix rounds made {total_diff} bytes of diffs"

    data = await bus.get_artifact(result.artifacts["workspace"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile("pkg/mod_000.py")
        assert member is not None
        assert "security_review.fix3" in member.read().decode(), "the workspace after the last fix round"

    state = await (await bus.workflows()).get(task.task_id)
    assert state.value is not None and len(state.value) < MIB // 4, (
        f"the workflow state holds references: {len(state.value or b'')} bytes"
    )

    events = await task_events(bus, task.task_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1)), "seq goes up by one per event"
    assert events[-1].kind == "completed"
