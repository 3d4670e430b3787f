"""What the monitor and the agents answer about themselves: alerts, the snapshot, agent status.

These are wire types like the ones in ``shared.contract.protocol`` (frozen, kw_only,
tagged by ``type``, versioned): ``Alert`` is published on ``<prefix>.alert.<kind>``,
``Snapshot`` answers ``<prefix>.monitor.snapshot`` and is the JSON of the monitor's
HTTP ``/status`` (the dashboard reads it), ``AgentStatus`` answers an agent's nats micro
``status`` endpoint (``<prefix>.svc.<role>.<instance_id>.status``). The monitor and the
agent runtime build them; the SDK decodes them; nobody hand-builds their dicts.

The snapshot keeps the spec's four role objects at the top level (durations both as the
spec's strings, e.g. ``"5m 30s"``, and as ``*_s`` seconds), plus totals, health,
instances, alerts, recent tasks and the services found through nats micro.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from shared.contract.protocol import BoundedDecoder, Message

__all__ = [
    "InstanceState",
    "RoleState",
    "AlertKind",
    "AlertSeverity",
    "AgentState",
    "Alert",
    "InstanceView",
    "RoleHealth",
    "UsageTotals",
    "OrchestratorFigures",
    "ResearcherFigures",
    "DeveloperFigures",
    "ReviewerFigures",
    "Totals",
    "TaskView",
    "EndpointView",
    "ServiceView",
    "MonitorInfo",
    "Snapshot",
    "AgentStatus",
    "alert_decoder",
    "snapshot_decoder",
    "agent_status_decoder",
]

InstanceState = Literal["alive", "suspect", "dead"]
RoleState = Literal["unknown", "up", "degraded", "down"]
AlertKind = Literal[
    "instance_dead", "instance_recovered", "role_down", "role_recovered", "role_stalled", "role_unstalled"
]
AlertSeverity = Literal["critical", "info"]
# an instance's own word for what it does now (heartbeats carry it too)
AgentState = Literal["idle", "busy", "draining"]


# --- alerts ---------------------------------------------------------------------------------------


class Alert(Message, frozen=True, kw_only=True, tag="alert"):
    """Published on ``<prefix>.alert.<kind>`` (core NATS) when health changes.

    ``instance_dead`` / ``instance_recovered`` name the instance;
    ``role_down`` / ``role_recovered`` leave ``instance_id`` empty.
    ``role_stalled``: the role has ``pending`` work items and no live instance
    whose heartbeat says it is pulling; ``role_unstalled`` when that ends.
    ``last_seen_s`` is the heartbeat age that triggered it (None for roles).
    """

    alert_id: str
    kind: AlertKind
    severity: AlertSeverity
    role: str
    instance_id: str | None = None
    text: str
    at: float
    last_seen_s: float | None = None
    live_instances: int = 0
    monitor: str = ""
    pending: int = 0


# --- the snapshot's parts -------------------------------------------------------------------------


class InstanceView(msgspec.Struct, frozen=True, kw_only=True):
    """One instance as the snapshot shows it."""

    role: str
    instance_id: str
    state: InstanceState
    status: str  # the agent's own word: idle | busy | draining
    in_flight: int  # the instance's load: work items it holds now
    current: list[str]  # "task/step/attempt" keys in flight
    last_seen_s: float  # seconds since the last heartbeat
    uptime_s: float
    heartbeat_interval: float
    steps_completed: int = 0
    steps_failed: int = 0


class RoleHealth(msgspec.Struct, frozen=True, kw_only=True):
    """A role's health: its state and how many instances are in each state."""

    state: RoleState
    alive: int
    suspect: int
    dead: int


class UsageTotals(msgspec.Struct, frozen=True, kw_only=True):
    """Model usage summed over a role's events (zero with builtin brains)."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    cost_usd: float = 0.0


class OrchestratorFigures(msgspec.Struct, frozen=True, kw_only=True):
    """The spec's ``orchestrator`` object plus counts behind it."""

    tasks_delegated: int
    avg_decomposition_time: str | None
    conflict_resolutions: int
    avg_decomposition_time_s: float | None
    tasks_decomposed: int
    retries: int
    reassignments: int
    usage: UsageTotals


class ResearcherFigures(msgspec.Struct, frozen=True, kw_only=True):
    """The spec's ``researcher`` object; ``accuracy_note`` says why a score is absent."""

    tasks_completed: int
    avg_research_time: str | None
    accuracy_score: float | None
    avg_research_time_s: float | None
    accuracy_note: str
    failures: int
    usage: UsageTotals


class DeveloperFigures(msgspec.Struct, frozen=True, kw_only=True):
    """The spec's ``developer`` object plus counts behind it."""

    tasks_completed: int
    avg_coding_time: str | None
    first_approval_rate: float | None
    avg_coding_time_s: float | None
    first_round_reviews: int
    failures: int
    usage: UsageTotals


class ReviewerFigures(msgspec.Struct, frozen=True, kw_only=True):
    """The spec's ``reviewer`` object plus counts behind it."""

    tasks_completed: int
    avg_review_time: str | None
    issues_found_per_task: float | None
    avg_review_time_s: float | None
    issues_found: int
    avg_review_score: float | None
    failures: int
    usage: UsageTotals


class Totals(msgspec.Struct, frozen=True, kw_only=True):
    """Deployment-wide counts over every metric event folded."""

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


class EndpointView(msgspec.Struct, frozen=True, kw_only=True):
    """One nats micro endpoint of a service, with the counters ``$SRV.STATS`` gave."""

    name: str
    subject: str
    num_requests: int = 0
    num_errors: int = 0


class ServiceView(msgspec.Struct, frozen=True, kw_only=True):
    """A service instance that answered ``$SRV.INFO`` (and ``$SRV.STATS``)."""

    name: str
    id: str
    version: str
    description: str = ""
    metadata: dict[str, str] = {}
    endpoints: list[EndpointView] = []
    started: str | None = None


class MonitorInfo(msgspec.Struct, frozen=True, kw_only=True):
    """The monitor instance that made the snapshot, and its health thresholds."""

    instance_id: str
    started_at: float
    ready: bool
    replayed_events: int
    http_url: str | None
    suspect_after: float
    dead_after: float


# --- the answers ------------------------------------------------------------------------------------


class Snapshot(Message, frozen=True, kw_only=True, tag="snapshot"):
    """What ``/status`` and the ``<prefix>.monitor.snapshot`` request return."""

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


class AgentStatus(Message, frozen=True, kw_only=True, tag="agent_status"):
    """An agent instance's answer on ``<prefix>.svc.<role>.<instance_id>.status`` (nats micro).

    ``in_flight`` lists the ``task/step/attempt`` keys it holds; ``pulling`` is False
    while its consumer loop is not taking work (draining, or the loop is down).
    """

    role: str  # researcher | developer | reviewer
    instance_id: str
    status: AgentState
    pulling: bool
    in_flight: list[str] = []
    completed: int = 0
    failed: int = 0
    started_at: float = 0.0


alert_decoder: BoundedDecoder[Alert] = BoundedDecoder(Alert)
snapshot_decoder: BoundedDecoder[Snapshot] = BoundedDecoder(Snapshot)
agent_status_decoder: BoundedDecoder[AgentStatus] = BoundedDecoder(AgentStatus)
