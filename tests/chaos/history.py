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
  ``visible`` when the trace or the final result accounts for every one of
  those executions, ``hidden`` otherwise.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from shared.protocol import FinalResult, StepStarted, TaskEvent

__all__ = ["Execution", "History", "Verdict", "check"]

Execution = tuple[str, int, str]  # (step_id, attempt, instance_id)


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

    def saw_result(self, result: FinalResult) -> None:
        self.published[result.task_id].setdefault(result_key(result), result)

    def saw_started(self, started: StepStarted) -> None:
        self.executions[started.task_id].add((started.step_id, started.attempt, started.instance_id))


def result_key(result: FinalResult) -> tuple:
    """What makes two final results *different* (not the timestamps of one re-flushed result)."""
    return (
        result.status,
        result.approved,
        result.reason,
        tuple(result.score_history),
        tuple((s.step_id, s.status, s.attempts) for s in result.steps),
    )


def reported_runs(step_id: str, events: list[TaskEvent], result: FinalResult | None) -> int:
    """How many executions of ``step_id`` the task's trace and final result account for.

    Each ``step_started`` and ``late_result`` event names one execution; the
    final result's step record names its attempts (and its run ids when the
    engine reports them).
    """
    in_trace = sum(1 for e in events if e.step_id == step_id and e.kind in ("step_started", "late_result"))
    in_result = 0
    if result is not None:
        for rec in result.steps:
            if rec.step_id == step_id:
                runs = getattr(rec, "runs", None)
                in_result = max(in_result, rec.attempts, len(runs) if runs else 0)
    return max(in_trace, in_result)


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

    @property
    def ok(self) -> bool:
        return not (self.lost or self.two_results or self.reruns_hidden)

    def table(self) -> str:
        """The printed history: figures first, then the sets behind the bad ones."""
        lines = [
            f"submitted         {self.submitted}",
            f"completed         {self.completed}   ({dict(sorted(self.statuses.items()))})",
            f"lost              {len(self.lost)}",
            f"two-results       {len(self.two_results)}",
            f"re-runs-visible   {len(self.reruns_visible)}",
            f"re-runs-hidden    {len(self.reruns_hidden)}",
        ]
        if self.lost:
            lines.append(f"lost tasks: {sorted(self.lost)}")
        for task, statuses in sorted(self.two_results.items()):
            lines.append(f"two results for {task}: {statuses}")
        if self.reruns_hidden:
            lines.append(f"hidden re-runs (task/step): {sorted(self.reruns_hidden)}")
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
        runs: Counter[str] = Counter(step for step, _attempt, _inst in history.executions.get(task, set()))
        for step, n in sorted(runs.items()):
            if n < 2:
                continue
            label = f"{task}/{step} x{n}"
            (visible if reported_runs(step, events, final) >= n else hidden).append(label)
    return Verdict(
        submitted=len(history.submitted),
        completed=statuses["completed"],
        statuses=statuses,
        lost=lost,
        two_results=two,
        reruns_visible=visible,
        reruns_hidden=hidden,
    )
