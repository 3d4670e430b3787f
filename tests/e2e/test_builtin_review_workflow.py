"""The offline example end to end: the real builtin brains harden examples/auth-api.

Real nats-server, real service processes, real bandit/ruff/radon, real pytest
runs inside the workspace, real syntax-tree fixes.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from shared.bus.core import Bus
from shared.contract.protocol import (
    DevelopmentOutput,
    ExpectedOutput,
    ResearchOutput,
    ReviewOutput,
    TaskBody,
    TaskSubmission,
    new_id,
    now,
)
from shared.contract.workspace import pack_dir
from shared.embedded.launcher import Stack
from tests.helpers import await_result, task_events

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "auth-api"


@pytest.mark.slow
async def test_builtin_brains_harden_the_example_workspace(bus: Bus, stack: Stack) -> None:
    for name in ("orchestrator", "researcher", "developer", "reviewer"):
        stack.add(name)
    ref = await bus.put_artifact(pack_dir(EXAMPLE), description="examples/auth-api")
    task = TaskSubmission(
        message_id=new_id("msg"),
        task_id=new_id("task"),
        task_type="review",
        context={"project": "auth-api", "language": "python", "topic": "JWT authentication"},
        task=TaskBody(
            description="Harden the user authentication API",
            requirements=[
                "Access token (15min)",
                "Refresh token (7 days)",
                "Rate limiting",
                "Secure password hashing",
            ],
        ),
        expected_output=ExpectedOutput(tests="all passing", coverage=">80%"),
        workspace=ref,
        created_at=now(),
    )
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    result = await await_result(bus, task.task_id, timeout=240)
    assert result.status == "completed", result.reason
    assert result.approved

    research = next(s for s in result.steps if s.step_id == "research")
    assert isinstance(research.output, ResearchOutput) and research.output.passages

    first = next(s for s in result.steps if s.step_id == "security_review")
    assert isinstance(first.output, ReviewOutput)
    assert first.output.verdict == "changes_requested"
    rules = {i.rule for i in first.output.issues}
    assert {"bandit:B324", "bandit:B602", "bandit:B506"} <= rules
    assert result.score_history[0] < 90 <= result.score_history[-1]
    assert result.score_history == sorted(result.score_history)

    fixes = [s for s in result.steps if s.role == "developer"]
    assert fixes and all(isinstance(s.output, DevelopmentOutput) for s in fixes)
    last_tests = [s.output.tests for s in fixes if s.output.tests is not None]
    assert last_tests and last_tests[-1].ok, "the fixes keep the example's tests passing"
    changed = {c.file for s in fixes for c in s.output.changes}
    assert "auth_api/passwords.py" in changed

    # the hardened workspace is a real artifact: md5 password hashing is gone
    data = await bus.get_artifact(result.artifacts["workspace"])
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        member = tar.extractfile("auth_api/passwords.py")
        assert member is not None
        passwords = member.read().decode()
    assert "md5" not in passwords

    kinds = [e.kind for e in await task_events(bus, task.task_id)]
    assert kinds[0] == "received" and kinds[-1] == "completed"
    assert "fix_requested" in kinds
