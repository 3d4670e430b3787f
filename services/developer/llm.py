"""The LLM developer brain: code written by the model, checked by running the tests.

For ``implementation``, ``write_tests`` and ``fix`` steps the model gets the
task, the research and design inputs, the reviewer's findings (for a fix) and
the current workspace (bounded), and answers with whole files. They are
written into the workspace (paths that would escape it are refused), the
workspace's tests are run for real, and a failing run is sent back to the
model once for repair. A fix that breaks tests which passed before is
reverted and reported as refused. ``test`` and ``performance_check`` steps
need no model: the builtin developer does them. The research, design and
implementation come typed in the item's ``DevelopInputs``, the findings in
its ``FixInputs``; any other kind fails the step (``WrongInputs``).
"""

from __future__ import annotations

import asyncio
import difflib
import logging
from pathlib import Path

import msgspec

from services.developer.builtin import BuiltinDeveloper, fix_input, needs_workspace, suite_timeout
from shared.agent.brains import BrainResult, StepContext, inputs_of
from shared.agent.llm import LLMClient, Meter, failed, workspace_digest
from shared.agent.settings import AgentSettings
from shared.contract.errors import LLMError
from shared.contract.protocol import (
    Change,
    DevelopInputs,
    DevelopmentOutput,
    Dispute,
    Issue,
    TestReport,
    WorkItem,
)
from shared.contract.workspace import SKIP_DIRS
from shared.tools.testing import TestRun, run_suite

__all__ = ["LLMDeveloper", "DevReply", "safe_path"]

logger = logging.getLogger(__name__)

MODEL_TASKS = ("implementation", "write_tests", "fix")
_REPAIR_ROUNDS = 1
_DIFF_CHARS = 4000
_CONCERNS = ("security", "correctness", "performance", "style")

_SYSTEM = """You are a senior Python developer working in an existing project workspace.
Return complete file contents (not diffs) for every file you create or change, with paths relative
to the workspace root. Keep changes minimal and focused; keep existing tests passing; write pytest
tests when asked. For a fix step, address the reviewer's findings: set "addresses" to the issue id a
file change fixes. You may dispute a finding that is not in the must-fix list by adding a dispute
with the issue id, your argument and the concern it stands for (security, correctness, performance
or style)."""


class FileReply(msgspec.Struct, forbid_unknown_fields=False):
    path: str
    content: str
    addresses: str | None = None


class DisputeReply(msgspec.Struct, forbid_unknown_fields=False):
    issue_id: str
    argument: str
    concern: str = "correctness"


class DevReply(msgspec.Struct, forbid_unknown_fields=False):
    summary: str
    files: list[FileReply] = []
    disputes: list[DisputeReply] = []


def safe_path(root: Path, name: str) -> Path | None:
    """``root / name`` when it stays inside the workspace and outside VCS/cache folders, else None."""
    rel = Path(name.strip())
    if not name.strip() or rel.is_absolute() or ".." in rel.parts:
        return None
    if any(part in SKIP_DIRS or part.startswith(".git") for part in rel.parts):
        return None
    path = (root / rel).resolve()
    return path if path.is_relative_to(root.resolve()) and path != root.resolve() else None


class LLMDeveloper:
    """Developer brain backed by a chat model; the builtin developer covers the model-free steps."""

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings
        self.client = LLMClient(settings)
        self.builtin = BuiltinDeveloper(settings)

    async def aclose(self) -> None:
        await self.client.aclose()

    async def run(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        if item.task_type not in MODEL_TASKS:
            return await self.builtin.run(item, ctx)
        upstream: DevelopInputs | None = None
        findings: list[Issue] = []
        must_fix: set[str] = set()
        if item.task_type == "fix":
            findings, must_fix, waived = fix_input(item)
            findings = [f for f in findings if f.id not in waived]
            if item.workspace is None:
                return needs_workspace("a fix step needs the code workspace to change")
        else:
            upstream = inputs_of(item, DevelopInputs)

        root = await ctx.workspace()
        timeout = suite_timeout(item)
        before = None
        if item.task_type == "fix":
            before = await asyncio.to_thread(
                run_suite, root, timeout, coverage=False, runtime=self.builtin.runtime
            )
        originals: dict[Path, str | None] = {}
        meter = Meter()
        prompt = await asyncio.to_thread(self._prompt, item, root, findings, must_fix, upstream)
        try:
            reply = await meter.ask(self.client, _SYSTEM, prompt, DevReply)
            asked = list(reply.disputes)
            changes, refused = _apply(root, reply, originals)
            after = await asyncio.to_thread(run_suite, root, timeout, runtime=self.builtin.runtime)
            for _ in range(_REPAIR_ROUNDS):
                if after is None or after.report.ok or after.report.environment_error or not changes:
                    break
                repair = f"{prompt}\n\n{_repair_note(reply, after)}"
                reply = await meter.ask(self.client, _SYSTEM, repair, DevReply)
                asked += reply.disputes
                more, more_refused = _apply(root, reply, originals)
                changes, refused = _merge(changes, more), refused + more_refused
                after = await asyncio.to_thread(run_suite, root, timeout, runtime=self.builtin.runtime)
        except LLMError as exc:
            return failed(exc, meter.usage, f"{item.task_type} by the model")

        still = after.passed_ids if after is not None else frozenset()
        if before is not None and (broken := sorted(before.passed_ids - still)):
            _revert(originals)
            why = f"reverted: broke {len(broken)} test(s) that passed before ({', '.join(broken[:5])})"
            refused += [msgspec.structs.replace(c, kind="reverted", description=why) for c in changes]
            changes, after = [], before
        disputes, notes = _disputes(asked, findings, must_fix)
        tests = after.report if after is not None else None
        if not changes and not disputes and item.task_type != "fix":
            error = "the model proposed no usable file changes" + (
                f" ({len(refused)} refused: {', '.join(c.file for c in refused)})" if refused else ""
            )
            return BrainResult("failed", error, error=error, usage=meter.usage)
        ref = await ctx.save_workspace(root, description=f"workspace after {item.step_id}")
        summary = _summary(item.task_type, reply.summary, changes, refused, tests, disputes, notes)
        output = DevelopmentOutput(
            summary=summary,
            files=sorted({c.file for c in changes}),
            changes=changes,
            refused=refused,
            tests=tests,
            disputes=disputes,
        )
        logger.info(
            "development done step=%s changes=%d refused=%d tests_ok=%s",
            item.step_id,
            len(changes),
            len(refused),
            tests.ok if tests else None,
        )
        return BrainResult(
            "completed", summary, output=output, artifacts={"workspace": ref}, usage=meter.usage
        )

    def _prompt(
        self,
        item: WorkItem,
        root: Path,
        findings: list[Issue],
        must_fix: set[str],
        upstream: DevelopInputs | None,
    ) -> str:
        task = item.task
        lines = [f"Step: {item.task_type}", f"Task: {task.description}"]
        lines += [f"Requirement: {r}" for r in task.requirements]
        if item.context:
            lines.append("Context: " + ", ".join(f"{k}={v}" for k, v in item.context.items()))
        expected = item.expected_output
        if expected.files or expected.tests or expected.coverage:
            lines.append(
                f"Expected output: files={expected.files} tests={expected.tests} coverage={expected.coverage}"
            )
        if upstream is not None:
            lines += _upstream_lines(upstream)
        if findings:
            lines.append("Reviewer findings (MUST FIX ones cannot be disputed):")
            for f in findings:
                flag = " MUST FIX" if f.id in must_fix else ""
                lines.append(
                    f"- id={f.id}{flag} [{f.severity} {f.concern}] {f.rule} at {f.file}:{f.line}: "
                    f"{f.message} Recommendation: {f.recommendation}"
                )
        code, left_out = workspace_digest(root, self.settings.llm_context_chars)
        lines += ["", "Workspace files:", code or "(empty workspace)"]
        if left_out:
            lines.append("Files not shown (too large for the prompt): " + ", ".join(left_out))
        return "\n".join(lines)


def _upstream_lines(up: DevelopInputs) -> list[str]:
    """The earlier steps' outputs the plan wired in, one block each."""
    lines = []
    if up.research_results is not None:
        lines.append(f"research_results: {up.research_results.summary}\n")
    if up.api_spec is not None:
        extra = up.api_spec.decisions or up.api_spec.components
        lines.append(f"api_spec: {up.api_spec.summary}\n" + "\n".join(f"- {d}" for d in extra))
    if up.implementation is not None:
        lines.append(f"implementation: {up.implementation.summary}\n")
    return lines


def _apply(
    root: Path, reply: DevReply, originals: dict[Path, str | None]
) -> tuple[list[Change], list[Change]]:
    """Write the reply's files; keep each file's first original text for a revert."""
    changes: list[Change] = []
    refused: list[Change] = []
    for f in reply.files:
        path = safe_path(root, f.path)
        if path is None:
            refused.append(
                Change(file=f.path, kind="refused", description="path escapes the workspace", diff="")
            )
            continue
        old = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None
        originals.setdefault(path, old)
        if old == f.content:
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f.content, encoding="utf-8")
        rel = path.relative_to(root.resolve()).as_posix()
        diff = "".join(
            difflib.unified_diff(
                (old or "").splitlines(keepends=True),
                f.content.splitlines(keepends=True),
                fromfile=f"a/{rel}" if old is not None else "/dev/null",
                tofile=f"b/{rel}",
            )
        )
        kind = "modified" if old is not None else "added"
        description = f"{kind} by the model" + (f" to address {f.addresses}" if f.addresses else "")
        changes.append(
            Change(
                file=rel, kind=kind, description=description, diff=diff[:_DIFF_CHARS], addresses=f.addresses
            )
        )
    return changes, refused


def _merge(first: list[Change], second: list[Change]) -> list[Change]:
    later = {c.file for c in second}
    return [c for c in first if c.file not in later] + second


def _revert(originals: dict[Path, str | None]) -> None:
    for path, text in originals.items():
        if text is None:
            path.unlink(missing_ok=True)
        else:
            path.write_text(text, encoding="utf-8")


def _repair_note(reply: DevReply, run: TestRun) -> str:
    r = run.report
    return (
        f"Your previous answer ({reply.summary!r}) was applied, but the tests fail: {r.passed} passed, "
        f"{r.failed} failed, {r.errors} errors. Output:\n{r.output_tail[-3000:]}\n"
        "Return the corrected files (complete contents) so the tests pass."
    )


def _disputes(
    replies: list[DisputeReply], findings: list[Issue], must_fix: set[str]
) -> tuple[list[Dispute], list[str]]:
    known = {f.id for f in findings}
    out: list[Dispute] = []
    notes: list[str] = []
    for d in {d.issue_id: d for d in replies}.values():  # the latest word on each issue
        if d.issue_id not in known:
            notes.append(f"ignored a dispute of unknown issue {d.issue_id!r}")
        elif d.issue_id in must_fix:
            notes.append(f"ignored a dispute of must-fix issue {d.issue_id}")
        elif d.concern.lower() not in _CONCERNS:
            notes.append(f"ignored a dispute of {d.issue_id} with unknown concern {d.concern!r}")
        else:
            out.append(Dispute(issue_id=d.issue_id, argument=d.argument, concern=d.concern.lower()))  # type: ignore[arg-type]
    return out, notes


def _summary(
    kind: str,
    said: str,
    changes: list[Change],
    refused: list[Change],
    tests: TestReport | None,
    disputes: list[Dispute],
    notes: list[str],
) -> str:
    parts = [f"{kind}: {said.strip() or 'no summary'}", f"{len(changes)} file(s) changed"]
    if refused:
        parts.append(f"{len(refused)} refused ({'; '.join(sorted({c.description for c in refused}))})")
    if tests is None:
        parts.append("no tests in the workspace")
    else:
        parts.append(f"tests: {tests.passed} passed, {tests.failed} failed, {tests.errors} errors")
    if disputes:
        parts.append(f"{len(disputes)} finding(s) disputed")
    parts += notes
    return " — ".join(parts)
