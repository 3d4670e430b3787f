"""What the monitor answers: ``Snapshot`` and its parts (JSON on ``/status`` and request/reply).

The spec's four role objects sit at the top level (durations both as the
spec's strings, e.g. ``"5m 30s"``, and as ``*_s`` seconds), plus totals,
health, instances, alerts, recent tasks and the services found through nats
micro. ``services.monitor.figures`` fills them in.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from services.monitor.health import Alert, InstanceView, RoleHealth

__all__ = [
    "UsageTotals",
    "OrchestratorFigures",
    "ResearcherFigures",
    "DeveloperFigures",
    "ReviewerFigures",
    "Totals",
    "TaskView",
    "ServiceView",
    "MonitorInfo",
    "Snapshot",
]


class UsageTotals(msgspec.Struct, frozen=True, kw_only=True):
    """Model usage summed over a role's events (zero with builtin brains)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    cost_usd: float = 0.0


class OrchestratorFigures(msgspec.Struct, frozen=True, kw_only=True):
    tasks_delegated: int
    avg_decomposition_time: str | None
    conflict_resolutions: int
    avg_decomposition_time_s: float | None
    tasks_decomposed: int
    retries: int
    reassignments: int
    usage: UsageTotals


class ResearcherFigures(msgspec.Struct, frozen=True, kw_only=True):
    tasks_completed: int
    avg_research_time: str | None
    accuracy_score: float | None
    avg_research_time_s: float | None
    accuracy_note: str
    failures: int
    usage: UsageTotals


class DeveloperFigures(msgspec.Struct, frozen=True, kw_only=True):
    tasks_completed: int
    avg_coding_time: str | None
    first_approval_rate: float | None
    avg_coding_time_s: float | None
    first_round_reviews: int
    failures: int
    usage: UsageTotals


class ReviewerFigures(msgspec.Struct, frozen=True, kw_only=True):
    tasks_completed: int
    avg_review_time: str | None
    issues_found_per_task: float | None
    avg_review_time_s: float | None
    issues_found: int
    avg_review_score: float | None
    failures: int
    usage: UsageTotals


class Totals(msgspec.Struct, frozen=True, kw_only=True):
    tasks_finished: int
    tasks_completed: int
    tasks_failed: int
    steps_completed: int
    failures: int
    retries: int
    reassignments: int
    usage: UsageTotals
    events_folded: int
    ignored_events: int
    last_event_at: float | None


class TaskView(msgspec.Struct, frozen=True, kw_only=True):
    """One task as seen through its metric events."""

    task_id: str
    status: Literal["running", "completed", "failed"]
    first_at: float
    last_at: float
    delegated: int
    steps_completed: int
    steps_failed: int
    conflicts: int
    retries: int
    reassignments: int
    duration_s: float | None
    duration: str | None


class ServiceView(msgspec.Struct, frozen=True, kw_only=True):
    """A service instance that answered ``$SRV.INFO`` (and ``$SRV.STATS``)."""

    name: str
    id: str
    version: str
    description: str = ""
    metadata: dict[str, str] = {}
    endpoints: list[dict[str, Any]] = []
    started: str | None = None


class MonitorInfo(msgspec.Struct, frozen=True, kw_only=True):
    instance_id: str
    started_at: float
    ready: bool
    replayed_events: int
    http_url: str | None
    suspect_after: float
    dead_after: float


class Snapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What ``/status`` and the ``monitor_snapshot`` request return."""

    orchestrator: OrchestratorFigures
    researcher: ResearcherFigures
    developer: DeveloperFigures
    reviewer: ReviewerFigures
    totals: Totals
    health: dict[str, RoleHealth]
    instances: list[InstanceView]
    alerts: list[Alert]
    recent_tasks: list[TaskView]
    services: list[ServiceView]
    monitor: MonitorInfo
    generated_at: float
