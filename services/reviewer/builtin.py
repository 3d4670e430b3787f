"""The builtin reviewer brain: real static analysis turned into a score and a verdict.

It reviews the step's code workspace with bandit, ruff and radon
(``shared.tools.analysis``), folds in the developer's latest test results when
the work item's ``ReviewInputs`` carry them, and answers with ranked issues, a
score out of 100 and ``approved`` / ``changes_requested``. No model, no canned
answers: a step without code fails with a clear reason, a work item with other
inputs than ``ReviewInputs`` fails at once (``WrongInputs``, not retryable).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from pathlib import Path
from typing import NamedTuple

from shared.agent.brains import BrainResult, StepContext, inputs_of
from shared.agent.settings import AgentSettings
from shared.contract.protocol import ReviewInputs, ReviewOutput, TestReport, WorkItem
from shared.tools.analysis import analyze, blocking, python_files, score, verdict

__all__ = ["BuiltinReviewer", "NO_WORKSPACE", "NO_PYTHON", "OpenReview", "open_review"]

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


async def open_review(item: WorkItem, ctx: StepContext) -> OpenReview | BrainResult:
    """The review's tests, threshold and workspace, or the failed result saying why there is nothing to review.

    They come from the item's ``ReviewInputs`` (validated when the item was decoded);
    ``WrongInputs`` for any other kind.
    """
    given = inputs_of(item, ReviewInputs)
    workspace = await ctx.workspace()
    if not await asyncio.to_thread(python_files, workspace):
        error = NO_WORKSPACE if item.workspace is None else NO_PYTHON
        return BrainResult("failed", error, error=error)
    return OpenReview(given.tests, given.threshold, workspace, frozenset(given.waived))


class BuiltinReviewer:
    """Security and quality review of a Python workspace (task types review, security_review, final_review)."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings

    async def run(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        opened = await open_review(item, ctx)
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
