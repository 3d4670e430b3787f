"""The spec's performance figures, folded from MetricEvents (pure, no I/O).

``Figures.fold(event)`` is the only way figures change, so the monitor can
rebuild them after a restart by replaying the metric stream from the start.
The views it returns are the parts of ``shared.contract.monitoring.Snapshot``,
the JSON the monitor serves.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.contract.monitoring import (
    DeveloperFigures,
    OrchestratorFigures,
    ResearcherFigures,
    ReviewerFigures,
    TaskView,
    Totals,
    UsageTotals,
)
from shared.contract.protocol import METRIC_KINDS, MetricEvent

__all__ = ["ACCURACY_UNAVAILABLE", "Figures", "human_duration"]

logger = logging.getLogger(__name__)

ACCURACY_UNAVAILABLE = "unavailable: no ground truth"
KINDS = frozenset(METRIC_KINDS)


def human_duration(seconds: float | None) -> str | None:
    """The spec's duration style: ``"2.3s"``, ``"5m 30s"``, ``"15m"``, ``"1h 5m"``."""
    if seconds is None:
        return None
    if seconds < 0.001:
        return f"{seconds * 1000:.2f}ms"
    if seconds < 0.1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.1f}s"
    total = round(seconds)
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h {minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m {secs}s" if secs else f"{minutes}m"


@dataclass
class _Mean:
    count: int = 0
    total: float = 0.0

    def add(self, value: float | None) -> None:
        if value is not None:
            self.count += 1
            self.total += value

    @property
    def value(self) -> float | None:
        return self.total / self.count if self.count else None


def _round(v: float | None, digits: int = 6) -> float | None:
    return None if v is None else round(v, digits)


@dataclass
class _Usage:
    prompt: int = 0
    completion: int = 0
    requests: int = 0
    cost: float = 0.0

    def add(self, ev: MetricEvent) -> None:
        u = ev.usage
        self.prompt += u.prompt_tokens
        self.completion += u.completion_tokens
        self.requests += u.requests
        self.cost += u.cost_usd

    def view(self) -> UsageTotals:
        return UsageTotals(
            prompt_tokens=self.prompt,
            completion_tokens=self.completion,
            requests=self.requests,
            cost_usd=round(self.cost, 6),
        )


@dataclass
class _Role:
    completed: int = 0
    failed: int = 0
    duration: _Mean = field(default_factory=_Mean)
    usage: _Usage = field(default_factory=_Usage)


@dataclass
class _Task:
    task_id: str
    first_at: float
    last_at: float
    status: Literal["running", "completed", "failed"] = "running"
    finished_at: float | None = None
    counts: dict[str, int] = field(default_factory=dict)

    def view(self) -> TaskView:
        c = self.counts
        dur = None if self.finished_at is None else max(0.0, self.finished_at - self.first_at)
        return TaskView(
            task_id=self.task_id,
            status=self.status,
            first_at=self.first_at,
            last_at=self.last_at,
            delegated=c.get("delegated", 0),
            steps_completed=c.get("step_completed", 0),
            steps_failed=c.get("step_failed", 0),
            conflicts=c.get("conflict_resolved", 0),
            retries=c.get("retry", 0),
            reassignments=c.get("reassigned", 0),
            duration_s=_round(dur),
            duration=human_duration(dur),
        )


@dataclass
class Figures:
    """Running aggregates of every MetricEvent folded so far."""

    recent_tasks_kept: int = 20
    tasks_tracked: int = 1000
    events_folded: int = 0
    ignored_events: int = 0
    last_event_at: float | None = None
    _roles: dict[str, _Role] = field(default_factory=dict)
    _count: dict[str, int] = field(default_factory=dict)
    _decomposition: _Mean = field(default_factory=_Mean)
    _accuracy: _Mean = field(default_factory=_Mean)
    _review_score: _Mean = field(default_factory=_Mean)
    _issues: int = 0
    _reviews_with_issue_count: int = 0
    _first_round: int = 0
    _first_round_approved: int = 0
    _tasks_completed: int = 0
    _tasks: OrderedDict[str, _Task] = field(default_factory=OrderedDict)
    _by_instance: dict[str, tuple[int, int]] = field(default_factory=dict)

    def role(self, name: str) -> _Role:
        return self._roles.setdefault(name, _Role())

    def fold(self, ev: MetricEvent) -> None:
        """Account for one event; unknown kinds are counted as ignored, never guessed at."""
        self.events_folded += 1
        self.last_event_at = ev.at if self.last_event_at is None else max(self.last_event_at, ev.at)
        if ev.kind not in KINDS:
            self.ignored_events += 1
            logger.debug("ignored metric kind=%s role=%s", ev.kind, ev.role)
            return
        self._count[ev.kind] = self._count.get(ev.kind, 0) + 1
        r = self.role(ev.role)
        r.usage.add(ev)
        if ev.kind in ("step_completed", "step_failed"):
            done, failed = self._by_instance.get(ev.instance_id, (0, 0))
            if ev.kind == "step_completed":
                r.completed += 1
                r.duration.add(ev.duration_s)
                done += 1
                if ev.role == "reviewer" and ev.issues_found is not None:
                    self._issues += ev.issues_found
                    self._reviews_with_issue_count += 1
            else:
                r.failed += 1
                failed += 1
            self._by_instance[ev.instance_id] = (done, failed)
        elif ev.kind == "decomposed":
            self._decomposition.add(ev.duration_s)
        elif ev.kind == "review_verdict":
            self._review_score.add(ev.value)
            if ev.first_round:
                self._first_round += 1
                self._first_round_approved += 1 if ev.approved else 0
        elif ev.kind == "research_used":
            self._accuracy.add(ev.value)
        elif ev.kind == "task_finished":
            self._tasks_completed += 1 if (ev.value or 0.0) >= 1.0 else 0
        if ev.task_id:
            self._fold_task(ev)

    def _fold_task(self, ev: MetricEvent) -> None:
        assert ev.task_id is not None
        task = self._tasks.get(ev.task_id)
        if task is None:
            task = self._tasks[ev.task_id] = _Task(ev.task_id, ev.at, ev.at)
            while len(self._tasks) > self.tasks_tracked:
                self._tasks.popitem(last=False)
        self._tasks.move_to_end(ev.task_id)
        task.first_at = min(task.first_at, ev.at)
        task.last_at = max(task.last_at, ev.at)
        task.counts[ev.kind] = task.counts.get(ev.kind, 0) + 1
        if ev.kind == "task_finished":
            task.status = "completed" if (ev.value or 0.0) >= 1.0 else "failed"
            task.finished_at = ev.at

    def count(self, kind: str) -> int:
        return self._count.get(kind, 0)

    # --- views -------------------------------------------------------------------------
    def orchestrator(self) -> OrchestratorFigures:
        avg = self._decomposition.value
        return OrchestratorFigures(
            tasks_delegated=self.count("delegated"),
            avg_decomposition_time=human_duration(avg),
            conflict_resolutions=self.count("conflict_resolved"),
            avg_decomposition_time_s=_round(avg),
            tasks_decomposed=self._decomposition.count,
            retries=self.count("retry"),
            reassignments=self.count("reassigned"),
            usage=self.role("orchestrator").usage.view(),
        )

    def researcher(self) -> ResearcherFigures:
        r = self.role("researcher")
        avg = r.duration.value
        accuracy = self._accuracy.value
        return ResearcherFigures(
            tasks_completed=r.completed,
            avg_research_time=human_duration(avg),
            accuracy_score=_round(accuracy, 3),
            avg_research_time_s=_round(avg),
            accuracy_note=(
                ACCURACY_UNAVAILABLE
                if accuracy is None
                else f"share of research outputs used downstream ({self._accuracy.count} judged)"
            ),
            failures=r.failed,
            usage=r.usage.view(),
        )

    def developer(self) -> DeveloperFigures:
        r = self.role("developer")
        avg = r.duration.value
        rate = self._first_round_approved / self._first_round if self._first_round else None
        return DeveloperFigures(
            tasks_completed=r.completed,
            avg_coding_time=human_duration(avg),
            first_approval_rate=_round(rate, 3),
            avg_coding_time_s=_round(avg),
            first_round_reviews=self._first_round,
            failures=r.failed,
            usage=r.usage.view(),
        )

    def reviewer(self) -> ReviewerFigures:
        r = self.role("reviewer")
        avg = r.duration.value
        n = self._reviews_with_issue_count
        return ReviewerFigures(
            tasks_completed=r.completed,
            avg_review_time=human_duration(avg),
            issues_found_per_task=_round(self._issues / n, 3) if n else None,
            avg_review_time_s=_round(avg),
            issues_found=self._issues,
            avg_review_score=_round(self._review_score.value, 1),
            failures=r.failed,
            usage=r.usage.view(),
        )

    def totals(self) -> Totals:
        usage = _Usage()
        for r in self._roles.values():
            usage.prompt += r.usage.prompt
            usage.completion += r.usage.completion
            usage.requests += r.usage.requests
            usage.cost += r.usage.cost
        return Totals(
            tasks_finished=self.count("task_finished"),
            tasks_completed=self._tasks_completed,
            tasks_failed=self.count("task_finished") - self._tasks_completed,
            steps_completed=self.count("step_completed"),
            failures=self.count("step_failed"),
            retries=self.count("retry"),
            reassignments=self.count("reassigned"),
            usage=usage.view(),
            events_folded=self.events_folded,
            ignored_events=self.ignored_events,
            last_event_at=self.last_event_at,
        )

    def recent_tasks(self) -> list[TaskView]:
        """The most recently active tasks, newest first."""
        newest = sorted(self._tasks.values(), key=lambda t: t.last_at, reverse=True)
        return [t.view() for t in newest[: self.recent_tasks_kept]]

    def by_instance(self, instance_id: str) -> tuple[int, int]:
        """(steps completed, steps failed) by one instance."""
        return self._by_instance.get(instance_id, (0, 0))

    def role_figures(self) -> dict[str, Any]:
        """The four role objects in the spec's shape (what a restart must reproduce)."""
        return {
            "orchestrator": self.orchestrator(),
            "researcher": self.researcher(),
            "developer": self.developer(),
            "reviewer": self.reviewer(),
        }
