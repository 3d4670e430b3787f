"""Aggregation: the final result and its Markdown report, built from the workflow state.

The result is bounded: when its JSON would pass ``limit`` bytes, step outputs
are shortened (their full text stays in each step's ``output_ref``), then
dropped if that is not enough, and the report is clipped, so it fits one
message.
"""

from __future__ import annotations

import time

import msgspec

from services.orchestrator.state import StepState, WorkflowState
from shared.bus.outputs import clip, shorten
from shared.contract import textsafe
from shared.contract.protocol import (
    ArtifactRef,
    DesignOutput,
    DevelopmentOutput,
    FinalResult,
    Plan,
    ResearchOutput,
    ReviewOutput,
    StepRecord,
    Usage,
    encode,
)

__all__ = ["final_result", "markdown_report", "RESULT_LIMIT"]

RESULT_LIMIT = 256 * 1024
"""Default bound (bytes of JSON) on a final result."""


def _record(step: StepState) -> StepRecord:
    res = step.result
    if step.inline_output is not None:
        out = step.inline_output
        return StepRecord(
            step_id=step.id,
            role="orchestrator",
            task_type=step.task_type,
            description=step.description,
            status=step.status,
            attempts=step.attempt,
            instance_id="orchestrator (self)",
            summary=out.summary,
            output=out,
        )
    applied = next((r.run_id for r in step.runs if r.outcome == "applied"), None)
    return StepRecord(
        step_id=step.id,
        role=step.role,
        task_type=step.task_type,
        description=step.description,
        status=step.status,
        attempts=step.attempt,
        instance_id=step.instance_id,
        summary=res.summary if res else "",
        output=res.output if res else None,
        issues=res.issues if res else [],
        score=res.score if res else None,
        duration_s=res.timings.duration if res else 0.0,
        usage=res.usage if res else Usage(),
        error=res.error if res else None,
        runs=list(step.runs),
        applied_run=applied,
        output_ref=res.output_ref if res else None,
    )


def _usage(plan: Plan, records: list[StepRecord]) -> Usage:
    """The task's model usage: the planner's, then every step's."""
    parts = [plan.usage, *(r.usage for r in records)]
    return Usage(
        model=next((u.model for u in parts if u.model), ""),
        prompt_tokens=sum(u.prompt_tokens for u in parts),
        completion_tokens=sum(u.completion_tokens for u in parts),
        requests=sum(u.requests for u in parts),
        cost_usd=round(sum(u.cost_usd for u in parts), 6),
    )


def final_result(st: WorkflowState, limit: int = RESULT_LIMIT) -> FinalResult:
    """The task's aggregated result, at most ``limit`` bytes of JSON (see the module doc)."""
    result = _full_result(st)
    if len(encode(result)) <= limit:
        return result
    steps = [
        msgspec.structs.replace(r, output=shorten(r.output, 2048) if r.output is not None else None)
        for r in result.steps
    ]
    result = msgspec.structs.replace(result, steps=steps, report_markdown="")
    if len(encode(result)) > limit:  # e.g. thousands of findings: keep the records, not the outputs
        bare = [msgspec.structs.replace(r, output=None, issues=[]) for r in result.steps]
        result = msgspec.structs.replace(result, steps=bare, needs_attention=result.needs_attention[:100])
    room = max(1024, limit - len(encode(result)) - 256)
    report = clip(textsafe.text(markdown_report(result, st.late_results)), room)
    return msgspec.structs.replace(result, report_markdown=report)


def _full_result(st: WorkflowState) -> FinalResult:
    status = st.status
    if status == "running":
        raise ValueError(f"task {st.task_id} is still running: it has no final result yet")
    records = [_record(s) for s in st.steps if s.status != "pending"]
    by_role: dict[str, float] = {}
    for r in records:
        by_role[r.role] = round(by_role.get(r.role, 0.0) + r.duration_s, 3)
    artifacts: dict[str, ArtifactRef] = {}
    if st.workspace is not None:
        artifacts["workspace"] = st.workspace
    if st.submission.workspace is not None:  # what `cadre result --patch` diffs against
        artifacts["submitted_workspace"] = st.submission.workspace
    for s in st.steps:
        if s.result is not None:
            for name, ref in s.result.artifacts.items():
                if name != "workspace":
                    artifacts[f"{s.id}.{name}"] = ref
    result = FinalResult(
        task_id=st.task_id,
        status=status,
        approved=st.approved,
        reason=st.reason,
        description=st.submission.task.description,
        task_type=st.submission.task_type,
        plan=st.plan,
        steps=records,
        score_history=list(st.score_history),
        conflicts=list(st.conflicts),
        recoveries=list(st.recoveries),
        timings_by_role=by_role,
        artifacts=artifacts,
        usage=_usage(st.plan, records),
        started_at=st.started_at,
        finished_at=st.finished_at,
        needs_attention=list(st.needs_attention),
        rerun_steps=[s.id for s in st.steps if len(s.runs) > 1],
    )
    report = textsafe.text(markdown_report(result, st.late_results))  # no control characters from workspaces
    return msgspec.structs.replace(result, report_markdown=report)


def _clock(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))


def _configure_section(r: FinalResult) -> list[str]:
    """Environment variables the changed code needs and follow-ups the fixes left, from every step."""
    settings: dict[str, str] = {}
    follow: list[str] = []
    for s in r.steps:
        if isinstance(s.output, DevelopmentOutput):
            for v in s.output.configure:
                need = "required" if v.required else "optional: random per process when unset"
                settings.setdefault(
                    v.name, f"- `{v.name}` — {v.purpose} ({textsafe.md_code(v.file)}; {need})"
                )
            follow += [
                f"- {textsafe.md_code(f'{f.file}:{f.line}')} — {f.message}" for f in s.output.follow_ups
            ]
    out: list[str] = []
    if settings:
        out += ["", "## Configure before running", "", *settings.values()]
    if follow:
        out += ["", "## Follow-ups for a human", "", *dict.fromkeys(follow)]
    return out


def markdown_report(r: FinalResult, late: list[str]) -> str:
    """A readable report of everything that happened."""
    out = [f"# {r.description}", ""]
    reviewed = r.score_history or any(s.role == "reviewer" for s in r.steps)  # no verdict without a review
    verdict = (", approved" if r.approved else ", not approved") if reviewed else ""
    out.append(f"- **Task**: `{r.task_id}` ({r.task_type}) — **{r.status}**{verdict}")
    if r.reason:
        out.append(f"- **Reason**: {r.reason}")
    out.append(
        f"- **Started**: {_clock(r.started_at)}; **finished**: {_clock(r.finished_at)} "
        f"({r.finished_at - r.started_at:.1f}s)"
    )
    if r.score_history:
        out.append(f"- **Score history**: {' → '.join(map(str, r.score_history))}")
    if r.usage.requests:
        out.append(
            f"- **Model usage**: {r.usage.prompt_tokens}+{r.usage.completion_tokens} tokens, "
            f"${r.usage.cost_usd:.4f}"
        )
    out += _configure_section(r)
    out += [
        "",
        "## Steps",
        "",
        "| # | step | role | status | attempts | instance | time |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, s in enumerate(r.steps, 1):
        out.append(
            f"| {n} | {s.step_id} | {s.role} | {s.status} | {s.attempts} | {s.instance_id or '-'} | {s.duration_s:.2f}s |"
        )
    for s in r.steps:
        out += ["", f"### {s.step_id} — {s.description}", "", s.summary or "(no summary)"]
        o = s.output
        if isinstance(o, ResearchOutput):
            out += [f"- [{n}] {p.source} — {p.section}" for n, p in enumerate(o.passages, 1)]
            out += [f"- library: **{lib.name}** {lib.version or ''} — {lib.reason}" for lib in o.libraries]
        elif isinstance(o, ReviewOutput):
            out.append(f"\nScore **{o.score}/100**, verdict **{o.verdict}**\n")
            out += [
                f"- **{i.severity}** `{i.rule}` {textsafe.md_code(f'{i.file}:{i.line}')}{' (blocking)' if i.id in o.blocking else ''}"
                f" — {i.message}"
                for i in o.issues
            ]
        elif isinstance(o, DevelopmentOutput):
            for c in o.changes:
                out.append(f"- {textsafe.md_code(c.file)}: {c.description}")
                if c.diff:
                    out += ["", "```diff", c.diff.rstrip(), "```"]
            if s.output_ref is not None:
                out.append(
                    f"- full output (diffs): artifact `{s.output_ref.name}` ({s.output_ref.size} bytes)"
                )
            out += [f"- refused: {textsafe.md_code(c.file)}: {c.description}" for c in o.refused]
            out += [f"- configure: `{v.name}` ({v.purpose})" for v in o.configure]
            out += [
                f"- follow-up: {textsafe.md_code(f'{f.file}:{f.line}')} {f.message}" for f in o.follow_ups
            ]
            if o.tests is not None:
                cov = f", coverage {o.tests.coverage:.1f}%" if o.tests.coverage is not None else ""
                out.append(
                    f"- tests: {o.tests.passed} passed, {o.tests.failed} failed, {o.tests.errors} errors{cov}"
                )
        elif isinstance(o, DesignOutput):
            out += [f"- {c}" for c in o.components] + [f"- decision: {d}" for d in o.decisions]
        if s.error:
            out.append(f"\n**Error**: {s.error}")
    if r.conflicts:
        out += ["", "## Conflicts", ""]
        for k in r.conflicts:
            out += [
                f'- Developer ({k.developer_concern}): "{k.developer_position}"',
                f'  Reviewer ({k.reviewer_concern}): "{k.reviewer_position}"',
                f"  **{k.winner} wins** by rule `{k.rule}` — {k.decision}",
            ]
    if r.needs_attention:
        out += ["", "## Needs a human or an LLM developer", ""]
        out += [
            f"- **{i.severity}** `{i.rule}` {textsafe.md_code(f'{i.file}:{i.line}')} — {i.message}"
            for i in r.needs_attention
        ]
    reruns = [s for s in r.steps if len(s.runs) > 1]
    if reruns:
        out += ["", "## Steps that ran more than once", ""]
        for s in reruns:
            runs = ", ".join(
                f"attempt {x.attempt} on {x.instance_id} (run {x.run_id}: {x.outcome.replace('_', ' ')})"
                for x in s.runs
            )
            out.append(f"- {s.step_id}: {runs}; applied: {s.applied_run or 'none'}")
    if r.recoveries:
        out += ["", "## Recoveries", ""]
        for rec in r.recoveries:
            out.append(
                f"- {rec.step_id} attempt {rec.failed_attempt} on {rec.failed_instance or 'no instance'} "
                f"({rec.instance_health}): {rec.reason}; re-assigned as attempt {rec.new_attempt}, delay {rec.delay_s:.1f}s"
            )
        out.append(
            f"\nRecovery result: task {r.status}; total delay {sum(x.delay_s for x in r.recoveries):.1f}s"
        )
    if late:
        out += ["", "## Late results (recorded, not applied)", ""] + [f"- {k}" for k in late]
    if r.timings_by_role:
        out += ["", "## Time by role", ""] + [
            f"- {role}: {secs:.2f}s" for role, secs in sorted(r.timings_by_role.items())
        ]
    return "\n".join(out) + "\n"
