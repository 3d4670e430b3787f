"""The builtin reviewer brain: real static analysis turned into a score and a verdict.

It reviews the step's code workspace with bandit, ruff and radon
(``shared.tools.analysis``), folds in the developer's latest test results when
the work item carries them, and answers with ranked issues, a score out of 100
and ``approved`` / ``changes_requested``. No model, no canned answers: a step
without code fails with a clear reason.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import NamedTuple

import msgspec

from shared.agent.brains import BrainResult, StepContext
from shared.agent.settings import AgentSettings
from shared.contract.protocol import ReviewOutput, TestReport, WorkItem
from shared.tools.analysis import analyze, blocking, python_files, score, verdict

__all__ = ["BuiltinReviewer", "NO_WORKSPACE", "NO_PYTHON", "OpenReview", "bad_input", "open_review"]

logger = logging.getLogger(__name__)

NO_WORKSPACE = "nothing to review: the step carries no code workspace"
NO_PYTHON = "nothing to review: the workspace holds no Python files"


class OpenReview(NamedTuple):
    """A review's inputs: the developer's latest tests, the approval threshold, the code,
    and the finding ids the orchestrator's conflict policy waived (they no longer count)."""

    tests: TestReport | None
    threshold: int
    workspace: Path
    waived: frozenset[str]


def bad_input(exc: Exception) -> BrainResult:
    """The failed result for review inputs that do not parse."""
    error = f"bad review input: {exc}"
    return BrainResult("failed", error, error=error)


async def open_review(item: WorkItem, ctx: StepContext, default_threshold: int) -> OpenReview | BrainResult:
    """The review's tests, threshold and workspace, or the failed result saying why there is nothing to review."""
    data = item.task.input_data
    try:
        raw_tests = data.get("tests")
        tests = msgspec.convert(raw_tests, TestReport) if raw_tests is not None else None
        threshold = int(data.get("threshold", default_threshold))
        waived = frozenset(msgspec.convert(data.get("waived", []), list[str]))
    except (msgspec.ValidationError, TypeError, ValueError) as exc:
        return bad_input(exc)
    workspace = await ctx.workspace()
    if not await asyncio.to_thread(python_files, workspace):
        error = NO_WORKSPACE if item.workspace is None else NO_PYTHON
        return BrainResult("failed", error, error=error)
    return OpenReview(tests, threshold, workspace, waived)


class BuiltinReviewer:
    """Security and quality review of a Python workspace (task types review, security_review, final_review)."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings

    async def run(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        opened = await open_review(item, ctx, self.settings.review_threshold)
        if isinstance(opened, BrainResult):
            return opened
        tests, threshold, workspace, waived = opened

        found = await asyncio.to_thread(analyze, workspace)
        issues = [i for i in found if i.id not in waived]
        total, breakdown = score(issues, tests)
        decision = verdict(total, issues, threshold)
        blockers = blocking(issues)
        counts = Counter(i.severity for i in issues)
        tally = ", ".join(f"{counts[sev]} {sev}" for sev in ("HIGH", "MEDIUM", "LOW"))
        notes = []
        not_run = getattr(tests, "environment_error", None)  # set by the sandboxed test runner
        if not_run:
            notes.append(f"tests could not run here ({not_run}); not counted")
        elif tests is not None and not tests.ok:
            notes.append(f"tests failing ({tests.failed} failed, {tests.errors} errors)")
        if tests is not None and tests.coverage is not None and breakdown["coverage"]:
            notes.append(f"coverage {tests.coverage:.0f}% below target")
        if blockers:
            notes.append(f"{len(blockers)} blocking (HIGH, or security MEDIUM+) must be fixed to approve")
        if len(found) > len(issues):
            notes.append(f"{len(found) - len(issues)} finding(s) waived by the conflict policy")
        extra = f"; {'; '.join(notes)}" if notes else ""
        summary = (
            f"Security score: {total}/100 — {tally}{extra}; "
            f"{'approved' if decision == 'approved' else 'changes requested'}"
        )
        logger.info(
            "review done step=%s score=%d verdict=%s issues=%d", item.step_id, total, decision, len(issues)
        )
        output = ReviewOutput(
            summary=summary,
            score=total,
            verdict=decision,
            issues=issues,
            breakdown=breakdown,
            tests=tests,
            blocking=blockers,
        )
        return BrainResult("completed", summary, output=output, issues=issues, score=total)
