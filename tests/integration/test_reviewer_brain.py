"""The builtin reviewer as a real service process on a real nats-server, reviewing a real workspace."""

from __future__ import annotations

from pathlib import Path

import msgspec

from shared.bus.core import Bus
from shared.contract.protocol import ArtifactRef, FixInputs, ReviewInputs, ReviewOutput, WorkItem
from shared.contract.protocol import TestReport as Report  # (a Test* name would be collected)
from shared.contract.workspace import pack_dir
from shared.embedded.launcher import Stack
from tests.helpers import StepFeed, make_item

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "auth-api"


def review_item(
    step: str,
    workspace: ArtifactRef | None,
    *,
    threshold: int = 90,
    waived: list[str] | None = None,
    tests: Report | None = None,
) -> WorkItem:
    return make_item(
        "reviewer",
        "security_review",
        step,
        task_id="task_review",
        description="Security review of authentication API",
        workspace=workspace,
        inputs=ReviewInputs(threshold=threshold, waived=list(waived or []), tests=tests),
    )


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

    # a finding the conflict policy waived no longer counts
    etag = next(i for i in first.issues if i.rule == "bandit:B324" and i.file == "auth_api/app.py")
    await bus.publish(subject, review_item("review-3", ref, waived=[etag.id]))
    third = await feed.result("review-3")
    assert etag.id not in {i.id for i in third.issues}
    assert third.score == 85 and "1 finding(s) waived by the conflict policy" in third.summary

    assert first.status == "completed" and first.role == "reviewer", first.error
    assert isinstance(first.output, ReviewOutput)
    assert first.score == first.output.score == 81
    assert first.output.verdict == "changes_requested"
    assert first.output.breakdown["security"] == -(3 * 4 + 2 * 2 + 1)
    assert first.output.breakdown["correctness"] == -2
    assert first.summary == (
        "Security score: 81/100 — 3 HIGH, 3 MEDIUM, 1 LOW; "
        "5 blocking (HIGH, or security MEDIUM+) must be fixed to approve; changes requested"
    )
    # what blocks approval whatever the score: the HIGHs and the MEDIUM security findings, not F401
    blocking = {i.rule for i in first.issues if i.id in first.output.blocking}
    assert blocking == {"bandit:B324", "bandit:B602", "bandit:B506", "bandit:B105"}
    where = {(i.rule, i.severity, i.file) for i in first.issues}
    assert ("bandit:B324", "HIGH", "auth_api/passwords.py") in where
    assert ("bandit:B602", "HIGH", "auth_api/store.py") in where
    assert ("bandit:B506", "MEDIUM", "auth_api/config.py") in where
    assert ("ruff:F401", "MEDIUM", "auth_api/app.py") in where
    assert first.issues == first.output.issues

    assert second.status == "completed"
    assert msgspec.json.encode(second.issues) == msgspec.json.encode(first.issues)
    assert second.score == first.score


async def test_reviewer_counts_failing_tests_and_refuses_a_step_without_code_or_with_wrong_inputs(
    bus: Bus, stack: Stack, tmp_path: Path
) -> None:
    stack.add("reviewer")
    clean = tmp_path / "clean"
    (clean / "pkg").mkdir(parents=True)
    (clean / "pkg" / "__init__.py").write_text(
        '"""A clean package."""\n\n\ndef add(a, b):\n    return a + b\n'
    )
    ref = await bus.put_artifact(pack_dir(clean))
    failing = Report(passed=3, failed=2, errors=0, coverage=64.0, command="pytest")
    subject = bus.subjects.work("reviewer", "normal")
    await bus.publish(subject, review_item("clean", ref, threshold=95))
    await bus.publish(subject, review_item("failing", ref, tests=failing, threshold=95))
    await bus.publish(subject, review_item("empty", None))
    wrong = make_item(
        "reviewer",
        "security_review",
        "wrong",
        task_id="task_review",
        description="review handed a fix step's inputs",
        workspace=ref,
        inputs=FixInputs(),
    )
    await bus.publish(subject, wrong)
    feed = StepFeed(bus)

    refused = await feed.result("wrong")
    assert refused.status == "failed" and refused.retryable is False and refused.output is None
    assert refused.error == (
        "step wrong (reviewer security_review) needs ReviewInputs inputs, but its work item carries FixInputs"
    )

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
