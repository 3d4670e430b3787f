"""How the ``cadre`` CLI shows things: the live trace, a per-step progress board, results, tables.

Rendering only (rich); the CLI commands in ``shared.client.cli.app`` decide what to show.
Trace lines come from the orchestrator already in the spec's style
(``[Orchestrator] → [Developer]: Task: ...``); here they only get colour.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.markdown import Markdown
from rich.spinner import Spinner
from rich.table import Table
from rich.text import Text

from shared.client.wstree import FileChange
from shared.contract import textsafe
from shared.contract.monitoring import Snapshot
from shared.contract.protocol import FinalResult, Plan, TaskEvent

__all__ = [
    "trace_text",
    "StepBoard",
    "result_summary",
    "print_result",
    "snapshot_view",
    "health_table",
    "instances_table",
    "alerts_table",
    "tasks_table",
    "services_table",
    "changes_table",
    "without_diffs",
    "STATUS_STYLE",
]

_ACTORS = {
    "Orchestrator": "bold magenta",
    "Researcher": "bold cyan",
    "Developer": "bold green",
    "Reviewer": "bold yellow",
}
_ACTOR_RE = re.compile(r"\[(" + "|".join(_ACTORS) + r")\]")
_SEVERITY = {"(HIGH)": "bold red", "(MEDIUM)": "yellow", "(LOW)": "dim"}

STATUS_STYLE = {
    "completed": "bold green",
    "failed": "bold red",
    "rejected": "bold red",
    "cancelled": "bold yellow",
}


def trace_text(event: TaskEvent) -> Text:
    """One event's trace text with the actors and severities coloured (no markup parsing)."""
    shown = textsafe.text(event.text)  # workspace names and model output: no terminal escapes
    text = Text(shown)
    for m in _ACTOR_RE.finditer(shown):
        text.stylize(_ACTORS[m.group(1)], m.start(), m.end())
    for word, style in _SEVERITY.items():
        text.highlight_words([word], style)
    if event.kind in STATUS_STYLE:
        text.stylize(STATUS_STYLE[event.kind])
    return text


# event kind -> the state it puts its step in
_STEP_STATE = {
    "delegated": "queued",
    "step_started": "running",
    "step_completed": "done",
    "review": "done",
    "approved": "done",
    "step_failed": "failed",
    "fix_requested": "fixing",
    "delayed": "retrying",
    "conflict_resolved": "fixing",
}
_STATE_STYLE = {
    "pending": "dim",
    "queued": "cyan",
    "running": "bold cyan",
    "fixing": "yellow",
    "retrying": "yellow",
    "done": "green",
    "failed": "red",
    "cancelled": "yellow",
}


@dataclass
class _Row:
    step_id: str
    role: str
    description: str
    state: str = "pending"
    attempt: int = 0
    instance: str = ""
    score: int | None = None
    started: float | None = None
    finished: float | None = None


@dataclass
class StepBoard:
    """The progress display: one row per plan step, updated from the task's events."""

    rows: dict[str, _Row] = field(default_factory=dict)
    status: str = "running"

    def set_plan(self, plan: Plan) -> None:
        for step in plan.steps:
            self.rows.setdefault(step.id, _Row(step.id, step.role, step.description))

    def update(self, event: TaskEvent) -> None:
        if event.plan is not None:
            self.set_plan(event.plan)
        if event.kind in STATUS_STYLE:
            self.status = event.kind
            for open_row in self.rows.values():
                if open_row.state not in ("done", "failed", "pending"):
                    open_row.state = "cancelled"
            return
        if not event.step_id:
            return
        if event.step_id not in self.rows:  # a step the plan did not list: a fix round or a re-review
            if event.kind != "delegated":
                return
            task_line = next((ln for ln in event.text.splitlines() if ln.strip().startswith("Task:")), "")
            self.rows[event.step_id] = _Row(
                event.step_id, event.role or "", task_line.strip().removeprefix("Task:").strip()
            )
        row = self.rows[event.step_id]
        state = _STEP_STATE.get(event.kind)
        if state is not None:
            row.state = state
        if event.attempt:
            row.attempt = event.attempt
        if event.score is not None:
            row.score = event.score
        if event.kind == "step_started":
            row.instance = event.text.split()[1] if len(event.text.split()) > 1 else ""
            row.started = row.started or event.at
        if state in ("done", "failed"):
            row.finished = event.at

    def __rich__(self) -> RenderableType:
        table = Table(title=f"Task progress — {self.status}", expand=False, title_justify="left")
        for col in ("#", "step", "role", "state", "attempt", "instance", "score", "time"):
            table.add_column(col)
        for n, row in enumerate(self.rows.values(), 1):
            state: RenderableType = Text(row.state, style=_STATE_STYLE.get(row.state, ""))
            if row.state in ("queued", "running", "fixing", "retrying"):
                state = Spinner("dots", text=Text(row.state, style=_STATE_STYLE[row.state]))
            end = row.finished or (time.time() if row.started else None)
            took = f"{end - row.started:.1f}s" if row.started and end else ""
            table.add_row(
                str(n),
                row.step_id,
                row.role,
                state,
                str(row.attempt or ""),
                row.instance,
                "" if row.score is None else str(row.score),
                took,
            )
        return table


# a fenced diff block of the Markdown report (diff lines never are a bare fence)
_DIFF_BLOCK = re.compile(r"^```diff\n.*?^```[ \t]*\n?", re.S | re.M)


def without_diffs(markdown: str) -> str:
    """The Markdown report without its fenced diff blocks (the per-file table and ``--patch`` have them)."""
    return _DIFF_BLOCK.sub("", markdown)


def changes_table(changes: list[FileChange], task_id: str) -> RenderableType:
    """One row per changed file (status, lines in/out), and how to get the code itself."""
    table = Table(title=f"Changed files ({len(changes)})", title_justify="left")
    for col in ("file", "change", "+", "-"):
        table.add_column(col, overflow="fold")
    for c in changes:
        plus, minus = ("binary", "") if c.binary else (str(c.added), str(c.removed))
        table.add_row(textsafe.name(c.path), c.status, Text(plus, style="green"), Text(minus, style="red"))
    how = Text(
        f"The code: cadre result {task_id} --workspace DIR (the patched tree) or --patch FILE (a git diff)",
        style="dim",
    )
    return Group(table, how) if changes else Text("No file changed.", style="dim")


def result_summary(
    result: FinalResult, *, report: bool = True, changes: list[FileChange] | None = None
) -> RenderableType:
    """The final result: status, scores, steps, conflicts, recoveries, then the Markdown report.

    With ``changes`` (the per-file summary of the workspace) the report is shown
    without its diffs: a long fix run prints a table, not thousands of diff lines.
    """
    style = STATUS_STYLE.get(result.status, "")
    head = Text.assemble(
        ("Task ", "bold"),
        (result.task_id, "bold"),
        (": ", "bold"),
        (result.status.upper(), style),
    )
    if result.score_history:
        head.append(" (approved)" if result.approved else " (not approved)", style)
    parts: list[RenderableType] = [head]
    if result.reason:
        parts.append(Text(textsafe.text(f"Reason: {result.reason}")))
    facts = [f"type {result.task_type or '-'}"]
    if result.finished_at and result.started_at:
        facts.append(f"took {result.finished_at - result.started_at:.1f}s")
    if result.score_history:
        facts.append("scores " + " → ".join(str(s) for s in result.score_history))
    facts.append(f"{len(result.conflicts)} conflict(s) resolved, {len(result.recoveries)} recovery(ies)")
    if result.usage.requests:
        facts.append(
            f"LLM {result.usage.model}: {result.usage.prompt_tokens}+{result.usage.completion_tokens} tokens"
            f", ${result.usage.cost_usd:.4f}"
        )
    parts.append(Text(" · ".join(facts), style="dim"))
    if result.steps and not (report and result.report_markdown):  # the report has its own steps table
        table = Table(title="Steps", title_justify="left")
        for col in ("step", "role", "status", "attempts", "instance", "score", "secs", "summary"):
            table.add_column(col, overflow="fold")
        for s in result.steps:
            table.add_row(
                s.step_id,
                s.role,
                Text(s.status, style=STATUS_STYLE.get(s.status, "")),
                str(s.attempts),
                s.instance_id or "",
                "" if s.score is None else str(s.score),
                f"{s.duration_s:.1f}",
                textsafe.name((s.error or s.summary).splitlines()[0]) if (s.error or s.summary) else "",
            )
        parts.append(table)
    if result.artifacts:
        parts.append(Text("Artifacts: " + ", ".join(sorted(result.artifacts)), style="dim"))
    if report and result.report_markdown:
        text = result.report_markdown if changes is None else without_diffs(result.report_markdown)
        parts.append(Markdown(textsafe.text(text)))  # no control characters from workspaces
    if changes is not None:
        parts.append(changes_table(changes, result.task_id))
    return Group(*parts)


_HEALTH_STYLE = {
    "up": "green",
    "alive": "green",
    "degraded": "yellow",
    "suspect": "yellow",
    "down": "red",
    "dead": "red",
    "unknown": "dim",
    "critical": "red",
    "info": "cyan",
}


def _styled(word: str) -> Text:
    return Text(word, style=_HEALTH_STYLE.get(word, ""))


def _secs(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}s"


def _new_table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left")
    for col in columns:
        table.add_column(col, overflow="fold")
    return table


def health_table(snapshot: Snapshot) -> Table:
    """One row per role: its state and how many instances are alive, suspect, dead."""
    table = _new_table("Health", "role", "state", "alive", "suspect", "dead")
    for role, h in snapshot.health.items():
        table.add_row(textsafe.name(role), _styled(h.state), str(h.alive), str(h.suspect), str(h.dead))
    return table


def instances_table(snapshot: Snapshot) -> Table:
    """One row per agent instance seen by its heartbeats."""
    table = _new_table(
        "Instances", "role", "instance", "health", "status", "load", "current", "last seen", "done", "failed"
    )
    for i in snapshot.instances:
        table.add_row(
            textsafe.name(i.role),
            textsafe.name(i.instance_id),
            _styled(i.state),
            textsafe.name(i.status),
            str(i.in_flight),
            textsafe.name(", ".join(i.current)) or "idle",
            _secs(i.last_seen_s) + " ago",
            str(i.steps_completed),
            str(i.steps_failed),
        )
    return table


def alerts_table(snapshot: Snapshot, limit: int = 12) -> Table:
    """The monitor's most recent alerts, newest first."""
    table = _new_table("Alerts", "when", "severity", "kind", "alert")
    for a in snapshot.alerts[:limit]:
        table.add_row(
            time.strftime("%H:%M:%S", time.localtime(a.at)),
            _styled(a.severity),
            a.kind,
            textsafe.text(a.text),
        )
    return table


def tasks_table(snapshot: Snapshot) -> Table:
    """Recent tasks as the monitor saw them through their metric events."""
    table = _new_table(
        "Recent tasks", "task", "status", "delegated", "steps done", "failed", "conflicts", "retries", "took"
    )
    for t in snapshot.recent_tasks:
        table.add_row(
            textsafe.name(t.task_id),
            Text(t.status, style=STATUS_STYLE.get(t.status, "")),
            str(t.delegated),
            str(t.steps_completed),
            str(t.steps_failed),
            str(t.conflicts),
            str(t.retries + t.reassignments),
            t.duration or "",
        )
    return table


def snapshot_view(snapshot: Snapshot) -> RenderableType:
    """What ``cadre status`` shows of the monitor's snapshot: health, instances, alerts, tasks."""
    m = snapshot.monitor
    head = Text(
        f"monitor {textsafe.name(m.instance_id)}"
        + (f" · {textsafe.name(m.http_url)}" if m.http_url else "")
        + ("" if m.ready else " · still replaying")
        + f" · {snapshot.totals.tasks_finished} task(s) finished, {snapshot.totals.failures} step failure(s)",
        style="dim",
    )
    parts: list[RenderableType] = [head, health_table(snapshot), instances_table(snapshot)]
    if snapshot.alerts:
        parts.append(alerts_table(snapshot))
    if snapshot.recent_tasks:
        parts.append(tasks_table(snapshot))
    return Group(*parts)


def services_table(services: list[Any], title: str = "Services") -> Table:
    """Service instances found by nats micro discovery (``ServiceInfo``) as a table."""
    table = Table(title=title, title_justify="left")
    for col in ("service", "instance", "version", "micro id"):
        table.add_column(col, no_wrap=True)
    for s in sorted(services, key=lambda s: (s.name, s.metadata.get("instance_id", ""))):
        table.add_row(s.name, s.metadata.get("instance_id", ""), s.version, s.id, style="green")
    return table


def print_result(
    console: Console, result: FinalResult, *, report: bool = True, changes: list[FileChange] | None = None
) -> None:
    console.print(result_summary(result, report=report, changes=changes))
