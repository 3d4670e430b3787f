"""The builtin reviewer as a real service process on a real nats-server, reviewing a real workspace."""

from __future__ import annotations

import contextlib
from pathlib import Path

import msgspec
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext

from shared.bus import Bus
from shared.launcher import Stack
from shared.protocol import (
    ArtifactRef,
    ReviewOutput,
    StepResult,
    StepStarted,
    TaskBody,
    WorkItem,
    new_id,
    now,
    step_decoder,
)
from shared.workspace import pack_dir
from tests.helpers import wait_for_value

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "auth-api"


def review_item(step: str, workspace: ArtifactRef | None, **input_data: object) -> WorkItem:
    return WorkItem(
        message_id=new_id("msg"),
        to_agent="reviewer",
        task_type="security_review",
        task=TaskBody(description="Security review of authentication API", input_data=dict(input_data)),
        task_id="task_review",
        step_id=step,
        attempt=1,
        deadline=now() + 60,
        created_at=now(),
        workspace=workspace,
    )


class StepFeed:
    """Reads step messages through the orchestrator's durable consumer (as the orchestrator would)."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.messages: list[StepStarted | StepResult] = []
        self._sub: JetStreamContext.PullSubscription | None = None

    async def _pull(self) -> None:
        if self._sub is None:
            s = self.bus.subjects
            self._sub = await self.bus.js.pull_subscribe_bind(
                durable=s.results_consumer, stream=s.stream_results
            )
        with contextlib.suppress(NatsTimeout, TimeoutError):
            for msg in await self._sub.fetch(10, timeout=0.2):
                self.messages.append(step_decoder.decode(msg.data))
                await msg.ack()

    async def result(self, step: str, timeout: float = 60.0) -> StepResult:
        async def probe() -> StepResult | None:
            await self._pull()
            done = [m for m in self.messages if isinstance(m, StepResult) and m.step_id == step]
            return done[0] if done else None

        return await wait_for_value(probe, timeout, what=f"the result of step {step}")


async def test_reviewer_service_reviews_the_example_workspace_deterministically(
    bus: Bus, stack: Stack
) -> None:
    stack.add("reviewer")
    ref = await bus.put_artifact(pack_dir(EXAMPLE), description="auth-api workspace")
    subject = bus.subjects.work("reviewer", "normal")
    await bus.publish(subject, review_item("review-1", ref))
    await bus.publish(subject, review_item("review-2", ref))
    feed = StepFeed(bus)
    first, second = await feed.result("review-1"), await feed.result("review-2")

    assert first.status == "completed" and first.role == "reviewer", first.error
    assert isinstance(first.output, ReviewOutput)
    assert first.score == first.output.score == 82
    assert first.output.verdict == "changes_requested"
    assert first.output.breakdown["high"] == -12
    assert first.summary == "Security score: 82/100 — 3 HIGH, 2 MEDIUM, 2 LOW; changes requested"
    where = {(i.rule, i.severity, i.file) for i in first.issues}
    assert ("bandit:B324", "HIGH", "auth_api/passwords.py") in where
    assert ("bandit:B602", "HIGH", "auth_api/store.py") in where
    assert ("bandit:B506", "MEDIUM", "auth_api/config.py") in where
    assert ("ruff:F401", "MEDIUM", "auth_api/app.py") in where
    assert first.issues == first.output.issues

    assert second.status == "completed"
    assert msgspec.json.encode(second.issues) == msgspec.json.encode(first.issues)
    assert second.score == first.score


async def test_reviewer_counts_failing_tests_and_refuses_a_step_without_code(
    bus: Bus, stack: Stack, tmp_path: Path
) -> None:
    stack.add("reviewer")
    clean = tmp_path / "clean"
    (clean / "pkg").mkdir(parents=True)
    (clean / "pkg" / "__init__.py").write_text(
        '"""A clean package."""\n\n\ndef add(a, b):\n    return a + b\n'
    )
    ref = await bus.put_artifact(pack_dir(clean))
    failing = {"passed": 3, "failed": 2, "errors": 0, "coverage": 64.0, "command": "pytest"}
    subject = bus.subjects.work("reviewer", "normal")
    await bus.publish(subject, review_item("clean", ref, threshold=95))
    await bus.publish(subject, review_item("failing", ref, tests=failing, threshold=95))
    await bus.publish(subject, review_item("empty", None))
    feed = StepFeed(bus)

    clean_result = await feed.result("clean")
    assert clean_result.status == "completed" and clean_result.issues == []
    assert clean_result.score == 100 and isinstance(clean_result.output, ReviewOutput)
    assert clean_result.output.verdict == "approved"

    failed_tests = await feed.result("failing")
    assert failed_tests.score == 100 - 20 - 5
    assert isinstance(failed_tests.output, ReviewOutput)
    assert failed_tests.output.verdict == "changes_requested"
    assert failed_tests.output.tests is not None and failed_tests.output.tests.failed == 2
    assert "tests failing" in failed_tests.summary

    empty = await feed.result("empty")
    assert empty.status == "failed"
    assert empty.error == "nothing to review: the step carries no code workspace"
