"""The builtin developer brain: real tests, real fixes, no model.

Task types:

- ``fix``: run the tests (baseline), fix the findings of its ``FixInputs``
  (``item.inputs``) with ``shared.tools.fixes`` (syntax-tree
  rewrites and ruff), re-running the tests after each change and refusing any
  change that breaks a test that passed before; dispute findings it judges
  mistaken; store the new workspace as ``artifacts["workspace"]``.
- ``test``: run the tests under coverage and report (``DevelopInputs``).
- ``performance_check``: measure the test suite and complexity hot spots (``DevelopInputs``).
- ``implementation`` / ``write_tests`` (or any other prose-to-code step):
  ``unsupported``, since writing new code from a description needs a model.

A step whose work item carries another kind of inputs fails at once (``WrongInputs``,
not retryable). ``task.input_data`` is the user's data: never read for control values.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import NamedTuple

from shared.agent.brains import BrainResult, StepContext, inputs_of
from shared.agent.settings import AgentSettings
from shared.contract.protocol import (
    Change,
    DevelopInputs,
    DevelopmentOutput,
    FixInputs,
    Issue,
    Setting,
    TestReport,
    WorkItem,
    encode,
    now,
)
from shared.tools.analysis import analyze
from shared.tools.fixes import FixOutcome, apply_fixes
from shared.tools.testing import TestRuntime, performance_profile, run_suite, run_tests

__all__ = ["BuiltinDeveloper", "FixInput", "NEEDS_LLM", "fix_input", "needs_workspace", "suite_timeout"]

logger = logging.getLogger(__name__)

NEEDS_LLM = (
    "Writing new code from a prose description needs an LLM brain: set CADRE_BRAIN=llm and "
    "CADRE_LLM_BASE_URL for the developer"
)


class FixInput(NamedTuple):
    """What a fix step is asked to do: the findings, the ids it must fix and the ids it must leave."""

    findings: list[Issue]
    must_fix: set[str]
    waived: set[str]


def fix_input(item: WorkItem) -> FixInput:
    """The item's ``FixInputs`` as the fixer uses them; ``WrongInputs`` (non-retryable) for another kind."""
    given = inputs_of(item, FixInputs)
    return FixInput(list(given.findings), set(given.must_fix), set(given.waived))


def needs_workspace(what: str) -> BrainResult:
    """The failed result of a step that needs code to work on and carries none."""
    reason = f"{what}, and this work item carries none"
    return BrainResult("failed", reason, error=reason)


def suite_timeout(item: WorkItem) -> float:
    """Leave the step room to report: tests get at most the time left before the deadline."""
    left = item.deadline - now() - 5.0
    return max(30.0, min(600.0, left))


def _relocate(workspace: Path, findings: list[Issue]) -> list[Issue]:
    """Findings as they stand in *this* workspace.

    A finding may come from a review of an earlier version (a must-fix decided
    after other fixes moved lines). Issue ids are stable fingerprints, so the
    current analysis gives each one its current line; a finding the analysis
    does not know (e.g. from an LLM reviewer) is kept as it came.
    """
    current = {issue.id: issue for issue in analyze(workspace)}
    return [current.get(f.id, f) for f in findings]


def _unique_settings(outcome: FixOutcome) -> list[Setting]:
    """The environment variables the fixed code reads, once each, in the order the fixes made them."""
    seen: dict[str, Setting] = {}
    for setting in outcome.configure:
        seen.setdefault(setting.name, setting)
    return list(seen.values())


def _tests_text(report: TestReport | None) -> str:
    if report is None:
        return "no tests in the workspace"
    if report.environment_error:
        return f"tests not run: {report.environment_error}"
    parts = [f"{report.passed} passed"]
    if report.failed:
        parts.append(f"{report.failed} failed")
    if report.errors:
        parts.append(f"{report.errors} errors")
    text = "tests " + ", ".join(parts)
    return text + (f", coverage {report.coverage:.0f}%" if report.coverage is not None else "")


class BuiltinDeveloper:
    """Developer brain that works on the step's code workspace with real tools."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.runtime = TestRuntime.from_settings(settings)  # the sandbox + per-project environments

    async def run(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        if item.task_type == "fix":
            return await self._fix(item, ctx)
        if item.task_type == "test":
            inputs_of(item, DevelopInputs)
            return await self._test(item, ctx)
        if item.task_type == "performance_check":
            inputs_of(item, DevelopInputs)
            return await self._performance(item, ctx)
        logger.info("unsupported task type=%s step=%s", item.task_type, item.step_id)
        return BrainResult("unsupported", NEEDS_LLM, error=NEEDS_LLM)

    # --- fix ---------------------------------------------------------------------------
    async def _fix(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        findings, must_fix, waived = fix_input(item)
        if item.workspace is None:
            return needs_workspace("a fix step needs the code workspace to change")
        ws = await ctx.workspace()
        findings = await asyncio.to_thread(_relocate, ws, findings)
        timeout = suite_timeout(item)
        baseline = await asyncio.to_thread(run_suite, ws, timeout, coverage=False, runtime=self.runtime)
        before = baseline.report if baseline is not None else None
        not_run = baseline.report.environment_error if baseline is not None else None
        if not_run:
            baseline = None  # tests that cannot run cannot gate a fix
        test_runs = 0

        def verify() -> str | None:
            """Reject a change that breaks a test that passed in the baseline."""
            nonlocal test_runs
            assert baseline is not None
            test_runs += 1
            run = run_suite(ws, timeout, coverage=False, runtime=self.runtime)
            broken = sorted(baseline.passed_ids - (run.passed_ids if run is not None else frozenset()))
            if not broken:
                return None
            names = ", ".join(t.rsplit("::", 1)[-1] for t in broken[:3])
            more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
            last = run.report.output_tail.strip().splitlines()[-1:] if run is not None else []
            return f"{len(broken)} test(s) that passed before fail: {names}{more}" + (
                f" ({last[0]})" if last else ""
            )

        outcome = await asyncio.to_thread(
            apply_fixes,
            ws,
            findings,
            must_fix=must_fix,
            waived=waived,
            verify=verify if baseline is not None else None,
            should_stop=ctx.cancelled.is_set,
        )
        if ctx.cancelled.is_set():
            return BrainResult("failed", "cancelled while fixing", error="cancelled")
        final = await asyncio.to_thread(run_tests, ws, timeout, runtime=self.runtime)
        ref = await ctx.save_workspace(ws, "workspace after fixes")
        summary = self._fix_summary(findings, waived, outcome, final)
        if not_run:
            summary += f" (tests could not run: {not_run}; fixes were not test-gated)"
        elif baseline is None:
            summary += " (no tests: fixes were not test-gated)"
        configure = _unique_settings(outcome)
        if configure:
            summary += "; configure before running: " + ", ".join(s.name for s in configure)
        if outcome.follow_ups:
            summary += f"; {len(outcome.follow_ups)} follow-up(s) for a human"
        logger.info("fix done step=%s test_runs=%d %s", item.step_id, test_runs, summary)
        output = DevelopmentOutput(
            summary=summary,
            files=outcome.files,
            changes=outcome.changes,
            refused=[*outcome.refused, *self._unfixable(outcome)],
            tests=final,
            tests_before=before,
            disputes=outcome.disputes,
            configure=configure,
            follow_ups=outcome.follow_ups,
        )
        return BrainResult("completed", summary, output=output, artifacts={"workspace": ref})

    @staticmethod
    def _unfixable(outcome: FixOutcome) -> list[Change]:
        return [
            Change(
                file=issue.file or "",
                kind="unfixable",
                description=f"{issue.rule}: {reason}",
                diff="",
                addresses=issue.id,
            )
            for issue, reason in outcome.unfixable
        ]

    @staticmethod
    def _fix_summary(
        findings: list[Issue], waived: set[str], outcome: FixOutcome, final: TestReport | None
    ) -> str:
        total = len({i.id for i in findings if i.id not in waived})
        notes = []
        for count, label in (
            (len(outcome.disputes), "disputed"),
            (len({c.addresses for c in outcome.refused if c.addresses}), "refused as test-breaking"),
            (len(outcome.unfixable), "not fixable automatically"),
            (len(outcome.waived), "waived"),
        ):
            if count:
                notes.append(f"{count} {label}")
        head = f"Fixed {len(outcome.fixed_ids)} of {total} findings"
        return head + (f" ({', '.join(notes)})" if notes else "") + f"; {_tests_text(final)}"

    # --- test / performance -----------------------------------------------------------------
    async def _test(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        if item.workspace is None:
            return needs_workspace("a test step needs a code workspace")
        ws = await ctx.workspace()
        report = await asyncio.to_thread(run_tests, ws, suite_timeout(item), runtime=self.runtime)
        summary = _tests_text(report).capitalize()
        if report is not None and report.output_tail:
            summary += f" ({report.output_tail.strip().splitlines()[-1]})"
        output = DevelopmentOutput(summary=summary, tests=report)
        return BrainResult("completed", summary, output=output, artifacts={"workspace": item.workspace})

    async def _performance(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        if item.workspace is None:
            return needs_workspace("a performance check needs a code workspace")
        ws = await ctx.workspace()
        profile = await asyncio.to_thread(performance_profile, ws, suite_timeout(item), runtime=self.runtime)
        parts = []
        if profile.tests is None:
            parts.append("no tests to time")
        else:
            parts.append(
                f"test suite {profile.wall_seconds:.2f}s wall, {profile.test_seconds:.2f}s in tests "
                f"({_tests_text(profile.tests)})"
            )
            if profile.slowest:
                parts.append(
                    "slowest: "
                    + ", ".join(f"{t.test.rsplit('::', 1)[-1]} {t.seconds:.3f}s" for t in profile.slowest[:3])
                )
        if profile.hot_spots:
            parts.append(
                f"complexity over {profile.functions} functions (mean {profile.mean_complexity}); highest: "
                + ", ".join(f"{h.file}:{h.name} {h.complexity} ({h.rank})" for h in profile.hot_spots[:3])
            )
        summary = "Measured " + "; ".join(parts)
        ref = await ctx.put_artifact(encode(profile), "application/json", "performance profile")
        output = DevelopmentOutput(summary=summary, tests=profile.tests)
        return BrainResult(
            "completed", summary, output=output, artifacts={"workspace": item.workspace, "performance": ref}
        )
