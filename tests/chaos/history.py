"""The chaos history checker: what went in, what came out, and what ran in between.

Modelled on Jepsen's set checks: the history records every submitted task,
every final result *published* (seen by a core subscriber, so JetStream
dedup cannot hide a second one), every result *stored*, every execution of a
step an agent announced (``StepStarted``), and the task's trace. ``check``
folds that into the figures the suite asserts on:

- ``lost``: submitted, yet no final result stored.
- ``two-results``: more than one *different* final result for one task (a
  byte-identical re-flush of the same result is one result).
- ``re-runs``: a (task, step) that more than one agent execution ran;
  ``visible`` when every one of those runs is reported: listed in the final
  result (by run id), or, for a run whose result came after the task ended,
  kept in the dead letters with the reason (nothing may follow the final
  event). For results without run ids, the trace must account for as many;
  ``hidden`` otherwise.
- ``trace-gaps`` / ``after-final``: a task whose trace ``seq`` is not 1..n, or
  that has an event after its final one.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from shared.contract.protocol import FinalResult, StepResult, StepStarted, TaskEvent

__all__ = ["Execution", "History", "Verdict", "check"]

Execution = tuple[str, str]  # (step_id, run key: the run id, else "<attempt>/<instance>")

_FINAL_KINDS = frozenset({"completed", "failed", "cancelled", "rejected"})


@dataclass
class History:
    """Everything observed during one chaos run (filled in by the observer and at the end)."""

    submitted: list[str] = field(default_factory=list)
    # task -> every distinct final result published (semantic key -> the result)
    published: dict[str, dict[tuple, FinalResult]] = field(default_factory=lambda: defaultdict(dict))
    # task -> final results stored on the events stream
    stored: dict[str, list[FinalResult]] = field(default_factory=lambda: defaultdict(list))
    # task -> every step execution announced by an agent
    executions: dict[str, set[Execution]] = field(default_factory=lambda: defaultdict(set))
    # task -> its trace
    events: dict[str, list[TaskEvent]] = field(default_factory=dict)
    # task -> runs whose step messages the orchestrator dead-lettered (late, after the task ended)
    dead_lettered: dict[str, set[Execution]] = field(default_factory=lambda: defaultdict(set))

    def saw_result(self, result: FinalResult) -> None:
        self.published[result.task_id].setdefault(result_key(result), result)

    def saw_started(self, started: StepStarted) -> None:
        self.executions[started.task_id].add((started.step_id, run_key(started)))

    def saw_dead_letter(self, step_msg: StepStarted | StepResult) -> None:
        self.dead_lettered[step_msg.task_id].add((step_msg.step_id, run_key(step_msg)))


def run_key(msg: StepStarted | StepResult) -> str:
    """A run's identity: its run id, or (results without run ids) attempt and instance."""
    return getattr(msg, "run_id", "") or f"{msg.attempt}/{msg.instance_id}"


def result_key(result: FinalResult) -> tuple:
    """What makes two final results *different* (not the timestamps of one re-flushed result)."""
    return (
        result.status,
        result.approved,
        result.reason,
        tuple(result.score_history),
        tuple((s.step_id, s.status, s.attempts) for s in result.steps),
    )


def rerun_visible(
    step_id: str, runs: set[str], events: list[TaskEvent], result: FinalResult | None, late: set[str]
) -> bool:
    """Whether the task's final result (or, lacking run ids, its trace) accounts for every run seen.

    With run ids the final result's step record must list each observed run;
    without them each ``step_started`` / ``late_result`` event, or each
    attempt of the step record, counts for one run.
    """
    records = [r for r in (result.steps if result else []) if r.step_id == step_id]
    listed = {run.run_id for rec in records for run in getattr(rec, "runs", [])}
    if listed:
        return runs <= listed | late
    in_trace = sum(1 for e in events if e.step_id == step_id and e.kind in ("step_started", "late_result"))
    in_result = max((rec.attempts for rec in records), default=0)
    return max(in_trace, in_result) >= len(runs)


def trace_faults(events: list[TaskEvent]) -> tuple[bool, bool]:
    """(seq not 1..n, an event after the final one) for one task's trace in stream order."""
    seqs = sorted(e.seq for e in events)
    gaps = bool(seqs) and seqs != list(range(1, len(seqs) + 1))
    final = next((i for i, e in enumerate(events) if e.kind in _FINAL_KINDS), None)
    after = final is not None and any(e.seq > events[final].seq for e in events)
    return gaps, after


@dataclass
class Verdict:
    """The figures of one run, and the offending ids behind each bad figure."""

    submitted: int
    completed: int
    statuses: Counter[str]
    lost: list[str]
    two_results: dict[str, list[str]]
    reruns_visible: list[str]
    reruns_hidden: list[str]
    trace_gaps: list[str]
    after_final: list[str]

    @property
    def ok(self) -> bool:
        return not (
            self.lost or self.two_results or self.reruns_hidden or self.trace_gaps or self.after_final
        )

    def table(self) -> str:
        """The printed history: figures first, then the sets behind the bad ones."""
        lines = [
            f"submitted         {self.submitted}",
            f"completed         {self.completed}   ({dict(sorted(self.statuses.items()))})",
            f"lost              {len(self.lost)}",
            f"two-results       {len(self.two_results)}",
            f"re-runs-visible   {len(self.reruns_visible)}",
            f"re-runs-hidden    {len(self.reruns_hidden)}",
            f"trace-gaps        {len(self.trace_gaps)}",
            f"after-final       {len(self.after_final)}",
        ]
        if self.lost:
            lines.append(f"lost tasks: {sorted(self.lost)}")
        for task, statuses in sorted(self.two_results.items()):
            lines.append(f"two results for {task}: {statuses}")
        if self.reruns_hidden:
            lines.append(f"hidden re-runs (task/step): {sorted(self.reruns_hidden)}")
        if self.trace_gaps:
            lines.append(f"traces with seq gaps: {sorted(self.trace_gaps)}")
        if self.after_final:
            lines.append(f"traces with events after the final one: {sorted(self.after_final)}")
        if self.reruns_visible:
            lines.append(f"visible re-runs (task/step): {sorted(self.reruns_visible)}")
        return "\n".join(lines)


def check(history: History) -> Verdict:
    """Fold a history into its verdict."""
    lost: list[str] = []
    two: dict[str, list[str]] = {}
    statuses: Counter[str] = Counter()
    visible: list[str] = []
    hidden: list[str] = []
    gaps: list[str] = []
    after: list[str] = []
    for task in history.submitted:
        stored = history.stored.get(task, [])
        distinct = dict(history.published.get(task, {}))
        for res in stored:
            distinct.setdefault(result_key(res), res)
        if not stored:
            lost.append(task)
        else:
            statuses[stored[-1].status] += 1
        if len(distinct) > 1:
            two[task] = [r.status for r in distinct.values()]
        final = stored[-1] if stored else None
        events = history.events.get(task, [])
        has_gaps, has_after = trace_faults(events)
        if has_gaps:
            gaps.append(f"{task} seq={[(e.seq, e.kind) for e in events]}")
        if has_after:
            after.append(task)
        runs: dict[str, set[str]] = defaultdict(set)
        for step, run in history.executions.get(task, set()):
            runs[step].add(run)
        for step, seen in sorted(runs.items()):
            if len(seen) < 2:
                continue
            label = f"{task}/{step} x{len(seen)}"
            recs = [r for r in (final.steps if final else []) if r.step_id == step]
            listed = sorted(run.run_id for r in recs for run in getattr(r, "runs", []))
            label += f" (seen {sorted(seen)}; result lists {listed or [r.attempts for r in recs]})"
            late = {run for s, run in history.dead_lettered.get(task, set()) if s == step}
            if late:
                label += f" (dead-lettered {sorted(late)})"
            (visible if rerun_visible(step, seen, events, final, late) else hidden).append(label)
    return Verdict(
        submitted=len(history.submitted),
        completed=statuses["completed"],
        statuses=statuses,
        lost=lost,
        two_results=two,
        reruns_visible=visible,
        reruns_hidden=hidden,
        trace_gaps=gaps,
        after_final=after,
    )
