"""Scripted test brains, plugged in through the same Brain interface as the real ones.

They are selected with ``CADRE_BRAIN=tests.brains:<Name>`` and steered by the
work item's ``task.input_data`` (the user's data: so one process can play several
scripts). Control values (threshold, findings) come typed in ``item.inputs``, as
for the real brains.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from shared.agent.brains import BrainResult, StepContext, inputs_of
from shared.agent.settings import AgentSettings
from shared.contract.errors import CapabilityMissing
from shared.contract.protocol import FixInputs, ReviewInputs, WorkItem


async def file_state(path: str, *, present: bool) -> None:
    """Wait until ``path`` exists (or is gone): the test's signal to a brain in another process.

    A file, not an event: the brain runs in a service process (and a redelivered item may
    run in another one), so the only thing both sides share is the file system; polling
    it is how that signal is read. No timeout: the step deadline and the test bound it.
    """
    while Path(path).exists() != present:
        await asyncio.sleep(0.05)


class EchoBrain:
    """Completes every step, saying which instance did it.

    ``input_data.hold_file``: while that file exists, the step waits (lets a
    test kill or stop the instance mid-work). ``input_data.crash``: raise.
    """

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings

    async def run(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        data = item.task.input_data
        if data.get("crash"):
            raise RuntimeError("scripted crash")
        hold = data.get("hold_file")
        if hold:
            await file_state(hold, present=False)
        return BrainResult("completed", f"done by {ctx.instance_id}: {item.task.description}")


class ScriptedBrain:
    """Plays any agent role by a script in ``task.input_data["script"]``.

    - ``scores``: security-review scores by round (``security_review`` is round 1,
      ``security_review.review2`` round 2, ...); below 90 comes with a HIGH issue.
      Other review chains (final review) score ``final_score`` (default 98).
    - ``dispute``: the first fix step disputes the first finding on performance grounds.
    - ``hang``: ``{"step": id, "attempts": [1]}`` — those attempts wait until cancelled.
    - ``fail``: ``{"step": id, "attempts": [1]}`` — those attempts raise (with
      ``"non_retryable": true``, a ``CapabilityMissing``: another attempt cannot help).
    - ``delay``: seconds every step takes (benchmarks).
    - ``stuck``: fix rounds change nothing (the developer reports no change).
    - ``diff_kb``: each fix round rewrites files of the task's workspace, ``diff_kb``
      KiB of diff in all (one file per 8 KiB), stores the new workspace and reports
      every change with its full diff.
    """

    def __init__(self, settings: AgentSettings) -> None:
        self.settings = settings

    async def run(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        from shared.contract.protocol import (
            Change,
            DevelopmentOutput,
            Dispute,
            Issue,
            Library,
            Passage,
            ResearchOutput,
            ReviewOutput,
        )

        script = item.task.input_data.get("script", {})
        if script.get("delay"):
            await asyncio.sleep(script["delay"])  # simulated work time (benchmarks)
        for mode in ("hang", "fail"):
            rule = script.get(mode)
            if rule and rule["step"] == item.step_id and item.attempt in rule.get("attempts", [1]):
                if mode == "fail" and rule.get("non_retryable"):
                    raise CapabilityMissing(f"scripted step {item.step_id}", "a capability this brain lacks")
                if mode == "fail":
                    raise RuntimeError(f"scripted failure of {item.step_id} attempt {item.attempt}")
                await asyncio.Event().wait()  # hang until the runtime cancels us
        if item.to_agent == "researcher":
            out = ResearchOutput(
                summary=f"Findings for: {item.task.description} [1]",
                passages=[
                    Passage(source="docs/knowledge/jwt.md", section="Lifetimes", text="15 min", score=1.0)
                ],
                libraries=[Library(name="PyJWT", version="2.10", summary="JWT", reason="matched jwt")],
            )
            return BrainResult("completed", out.summary, output=out)
        if item.to_agent == "reviewer":
            round_no = int(item.step_id.rsplit(".review", 1)[1]) if ".review" in item.step_id else 1
            chain = item.step_id.split(".")[0]
            scores = (
                script.get("scores", [95]) if chain == "security_review" else [script.get("final_score", 98)]
            )
            score = scores[min(round_no - 1, len(scores) - 1)]
            issues = []
            if score < 90:
                issues = [
                    Issue(
                        id="iss-ratelimit",
                        severity="HIGH",
                        rule="llm:rate-limit",
                        message="Missing rate limiting",
                        tool="scripted",
                        concern="security",
                        file="auth.py",
                        line=10,
                    ),
                ]
            threshold = inputs_of(item, ReviewInputs).threshold
            verdict = "approved" if score >= threshold and not issues else "changes_requested"
            out = ReviewOutput(
                summary=f"Security score: {score}/100", score=score, verdict=verdict, issues=issues
            )
            return BrainResult("completed", out.summary, output=out, issues=issues, score=score)
        # developer
        disputes = []
        if item.task_type == "fix" and script.get("dispute") and not item.step_id.endswith(".must"):
            findings = inputs_of(item, FixInputs).findings
            if findings:
                disputes = [
                    Dispute(
                        issue_id=findings[0].id,
                        argument="We should use synchronous hashing for performance",
                        concern="performance",
                    )
                ]
        changes: list[Change] = []
        artifacts = {}
        if item.task_type == "fix" and not script.get("stuck"):
            if script.get("diff_kb") and item.workspace is not None:
                changes, ref = await _rewrite_workspace(item, ctx, int(script["diff_kb"]))
                artifacts["workspace"] = ref
            else:
                changes = [Change(file="auth.py", kind="fix", description="scripted fix", diff="+# fixed\n")]
        out = DevelopmentOutput(
            summary=f"{item.task_type} done by {ctx.instance_id}: {len(changes)} change(s)",
            files=sorted({c.file for c in changes}) or ["auth.py"],
            changes=changes,
            disputes=disputes,
        )
        return BrainResult("completed", out.summary, output=out, artifacts=artifacts)


async def _rewrite_workspace(item: WorkItem, ctx: StepContext, diff_kb: int) -> tuple[list, object]:
    """Rewrite workspace files so the diffs total ``diff_kb`` KiB; return the changes and the new workspace."""
    import difflib

    from shared.contract.protocol import Change

    ws = await ctx.workspace()
    changes = []
    for n in range(max(1, diff_kb // 8)):
        path = ws / "pkg" / f"mod_{n:03d}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        old = path.read_text() if path.exists() else ""
        new = "".join(f"VALUE_{i} = '{item.step_id}-{i:04d}-{'x' * 40}'\n" for i in range(64))
        path.write_text(new)
        rel = f"pkg/mod_{n:03d}.py"
        diff = "".join(difflib.unified_diff(old.splitlines(True), new.splitlines(True), rel, rel))
        changes.append(Change(file=rel, kind="fix", description=f"rewrote {rel}", diff=diff))
    ref = await ctx.save_workspace(ws, f"workspace after {item.step_id}")
    return changes, ref


class CrashingBrain(ScriptedBrain):
    """Like ScriptedBrain, but ``input_data.script.die`` = ``{"step": id, "attempts": [1]}``
    ends the whole agent process (SIGKILL-like) when it takes that attempt.

    With ``"once_file": path`` it dies only the first time (it creates the file), so a
    restarted instance runs the redelivered item again; with ``"gate_file": path`` it
    waits for that file before dying (the test creates it once it saw the step start)."""

    async def run(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        import os

        rule = item.task.input_data.get("script", {}).get("die")
        if rule and rule["step"] == item.step_id and item.attempt in rule.get("attempts", [1]):
            once = rule.get("once_file")
            if not (once and Path(once).exists()):
                gate = rule.get("gate_file")  # die only once the test has seen the step start
                if gate:
                    await file_state(gate, present=True)
                if once:
                    Path(once).write_text("died once\n")
                os._exit(137)
        return await super().run(item, ctx)
