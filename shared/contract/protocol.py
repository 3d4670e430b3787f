"""Every message Cadre puts on the bus, as msgspec Structs.

JSON on the wire, so any NATS client can speak it. Each message is a frozen,
kw_only Struct tagged by its ``type`` field and carries a schema ``version``.
New fields always get defaults; field types never change. One typed decoder
per subject family lives at the bottom of this module; the monitor's and the agents'
answers (``Alert``, ``Snapshot``, ``AgentStatus``) are in ``shared.contract.monitoring``,
and ``shared.contract.registry`` maps every subject family to its decoder.
"""

from __future__ import annotations

import time
import uuid
from typing import Annotated, Any, Generic, Literal, TypeVar, get_args

import msgspec

__all__ = [
    "BoundedDecoder",
    "StepOutcome",
    "PROTOCOL_VERSION",
    "ROLES",
    "AGENT_ROLES",
    "PRIORITIES",
    "ID_PATTERN",
    "MAX_ID_LENGTH",
    "TaskId",
    "OptionalTaskId",
    "MessageId",
    "Role",
    "AgentRole",
    "Priority",
    "Severity",
    "Concern",
    "Message",
    "TaskBody",
    "ExpectedOutput",
    "ArtifactRef",
    "TaskSubmission",
    "WorkItem",
    "Score",
    "ResearchInputs",
    "DevelopInputs",
    "FixInputs",
    "ReviewInputs",
    "StepInputs",
    "Issue",
    "Dispute",
    "Passage",
    "Library",
    "Change",
    "TestReport",
    "Setting",
    "FollowUp",
    "ResearchOutput",
    "DevelopmentOutput",
    "ReviewOutput",
    "DesignOutput",
    "StepOutput",
    "Usage",
    "Timings",
    "StepStarted",
    "StepResult",
    "StepMessage",
    "StepRun",
    "RunOutcome",
    "RecoveryKind",
    "PlanStep",
    "Plan",
    "Conflict",
    "Recovery",
    "EventKind",
    "EVENT_KINDS",
    "FinalEventKind",
    "FINAL_EVENT_KINDS",
    "MetricKind",
    "METRIC_KINDS",
    "TaskEvent",
    "StepRecord",
    "FinalResult",
    "Heartbeat",
    "MetricEvent",
    "DeadLetter",
    "CancelRequest",
    "CancelReply",
    "ErrorReply",
    "new_id",
    "now",
    "encode",
    "task_decoder",
    "work_decoder",
    "step_decoder",
    "event_decoder",
    "result_decoder",
    "heartbeat_decoder",
    "metric_decoder",
    "dead_letter_decoder",
    "cancel_decoder",
    "cancel_reply_decoder",
    "error_decoder",
]

PROTOCOL_VERSION = 1

Role = Literal["orchestrator", "researcher", "developer", "reviewer"]
AgentRole = Literal["researcher", "developer", "reviewer"]
Priority = Literal["high", "normal", "low"]
Severity = Literal["HIGH", "MEDIUM", "LOW"]
# What a finding or a position is about; the conflict policy orders these.
Concern = Literal["security", "correctness", "performance", "style"]
# how one run of a step ended, as its agent reports it
StepOutcome = Literal["completed", "failed", "unsupported", "cancelled"]

ROLES: tuple[str, ...] = ("orchestrator", "researcher", "developer", "reviewer")
AGENT_ROLES: tuple[str, ...] = ("researcher", "developer", "reviewer")
PRIORITIES: tuple[str, ...] = ("high", "normal", "low")

# Ids are subject tokens (``cadre.result.<task_id>``), KV keys and dedup headers: they are
# validated when a message is decoded and never rewritten. A task id derived from a message
# id (``task_<message_id>``) still fits: a message id is at most 120 characters.
ID_PATTERN = r"^[A-Za-z0-9_\-]+$"
MAX_ID_LENGTH = 128
TaskId = Annotated[
    str,
    msgspec.Meta(
        pattern=ID_PATTERN,
        min_length=1,
        max_length=MAX_ID_LENGTH,
        description="letters, digits, '_' and '-'; 1-128 characters",
    ),
]
OptionalTaskId = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^[A-Za-z0-9_\-]*$",
        max_length=MAX_ID_LENGTH,
        description="empty (the orchestrator uses task_<message_id>) or a task id",
    ),
]
MessageId = Annotated[
    str,
    msgspec.Meta(
        pattern=ID_PATTERN,
        min_length=1,
        max_length=MAX_ID_LENGTH - 8,
        description="letters, digits, '_' and '-'; 1-120 characters; never empty",
    ),
]

_encoder = msgspec.json.Encoder()


def new_id(prefix: str) -> str:
    """A short unique id such as ``task_3f9c0a1b2c4d``."""
    return f"{prefix}_{uuid.uuid4().hex[:12]}"


def now() -> float:
    """Wall-clock seconds since the epoch (timestamps on the wire)."""
    return time.time()


def encode(msg: msgspec.Struct) -> bytes:
    """Encode any protocol message to JSON bytes."""
    return _encoder.encode(msg)


class Message(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", forbid_unknown_fields=False):
    """Base of every message on the bus."""

    version: int = PROTOCOL_VERSION


# --- the spec's task message -------------------------------------------------


class TaskBody(msgspec.Struct, frozen=True, kw_only=True):
    """The spec's ``task`` object: what to do."""

    description: str
    requirements: list[str] = []
    # the user's own data, passed on untouched; control values travel in ``WorkItem.inputs``
    input_data: dict[str, Any] = {}


class ExpectedOutput(msgspec.Struct, frozen=True, kw_only=True):
    """The spec's ``expected_output`` object."""

    files: list[str] = []
    tests: str | None = None
    coverage: str | None = None


class ArtifactRef(msgspec.Struct, frozen=True, kw_only=True):
    """A large payload kept in the object store, referenced by content hash."""

    name: str
    size: int
    sha256: str
    content_type: str = "application/gzip"
    description: str = ""
    # set for a client's upload, kept in the uploads stream (``<prefix>.upload.<client>.<sha256>.<n>``,
    # ``chunks`` messages) instead of the object store; the orchestrator checks it and copies it in
    uploaded_by: str = ""
    chunks: int = 0


class TaskSubmission(Message, frozen=True, kw_only=True, tag="task"):
    """A user's task, published on ``cadre.task.submit``.

    ``workspace`` is an optional code workspace (a tar.gz in the object
    store). A plain-JSON client may instead inline files in
    ``task.input_data["files"]`` as ``{"path": "content"}``.
    """

    message_id: MessageId
    task_id: OptionalTaskId = ""
    from_agent: str = "client"
    to_agent: str = "orchestrator"
    task_type: str = "feature"
    priority: Priority = "normal"
    context: dict[str, Any] = {}
    task: TaskBody
    expected_output: ExpectedOutput = ExpectedOutput()
    workspace: ArtifactRef | None = None
    deadline: float | None = None
    created_at: float = 0.0


class WorkItem(Message, frozen=True, kw_only=True, tag="work"):
    """One plan step delegated to an agent role: the spec's message structure
    plus the ids a real system needs (task, step, attempt, deadline)."""

    message_id: str
    from_agent: Role = "orchestrator"
    to_agent: AgentRole
    task_type: str
    priority: Priority = "normal"
    context: dict[str, Any] = {}
    # ``task.input_data`` is the user's own data, passed on as submitted (inline ``files`` go
    # as the workspace); what the orchestrator tells the agent is in ``inputs``
    task: TaskBody
    expected_output: ExpectedOutput = ExpectedOutput()
    task_id: str
    step_id: str
    attempt: int = 1
    deadline: float
    created_at: float
    workspace: ArtifactRef | None = None
    # instances that held an earlier attempt; the runtime lets another take it
    avoid_instances: list[str] = []
    # the step's typed inputs, one kind per step kind (a brain checks it got the kind it works with)
    inputs: StepInputs | None = None


# --- step outputs --------------------------------------------------------------


class Issue(msgspec.Struct, frozen=True, kw_only=True):
    """One finding: severity, rule, where, and what it is about."""

    id: str
    severity: Severity
    rule: str
    message: str
    tool: str
    concern: Concern = "correctness"
    file: str | None = None
    line: int | None = None
    recommendation: str = ""


class Dispute(msgspec.Struct, frozen=True, kw_only=True):
    """A developer's disagreement with a finding, and the concern it stands for."""

    issue_id: str
    argument: str
    concern: Concern


class Passage(msgspec.Struct, frozen=True, kw_only=True):
    source: str
    section: str
    text: str
    score: float


class Library(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    version: str | None
    summary: str
    reason: str


class Change(msgspec.Struct, frozen=True, kw_only=True):
    """One change the developer made, with the finding it addresses."""

    file: str
    kind: str
    description: str
    diff: str
    addresses: str | None = None


class TestReport(msgspec.Struct, frozen=True, kw_only=True):
    """A run of a workspace's tests.

    ``environment_error`` is set (one line) when the tests could not run for a
    reason of *our* environment, not the project's code: no sandbox here,
    dependencies that could not be installed, a module the tests import that
    nobody declared. A score must not punish the project for it.
    """

    passed: int
    failed: int
    errors: int
    coverage: float | None
    command: str
    output_tail: str = ""
    environment_error: str | None = None
    sandboxed: bool = False
    runner: str = "pytest"

    @property
    def ok(self) -> bool:
        return self.failed == 0 and self.errors == 0 and self.environment_error is None


class ResearchOutput(msgspec.Struct, frozen=True, kw_only=True, tag="research"):
    summary: str
    passages: list[Passage] = []
    libraries: list[Library] = []


class Setting(msgspec.Struct, frozen=True, kw_only=True):
    """An environment variable the changed code now needs before it can run (e.g. a secret moved out)."""

    name: str
    file: str
    line: int | None = None
    purpose: str = ""
    required: bool = True


class FollowUp(msgspec.Struct, frozen=True, kw_only=True):
    """Something a fix left for a human, e.g. a hash now longer than the column that stores it."""

    file: str
    line: int | None = None
    message: str
    addresses: str | None = None


class DevelopmentOutput(msgspec.Struct, frozen=True, kw_only=True, tag="development"):
    summary: str
    files: list[str] = []
    changes: list[Change] = []
    refused: list[Change] = []
    tests: TestReport | None = None
    # the run before any change (a fix step's baseline; None when not run or no tests)
    tests_before: TestReport | None = None
    disputes: list[Dispute] = []
    # configure before running: environment variables the changed code reads
    configure: list[Setting] = []
    follow_ups: list[FollowUp] = []


class ReviewOutput(msgspec.Struct, frozen=True, kw_only=True, tag="review"):
    summary: str
    score: int
    verdict: Literal["approved", "changes_requested"]
    issues: list[Issue] = []
    breakdown: dict[str, int] = {}
    tests: TestReport | None = None
    # ids of the open findings that block approval whatever the score (HIGH, or MEDIUM+ security)
    blocking: list[str] = []


class DesignOutput(msgspec.Struct, frozen=True, kw_only=True, tag="design"):
    summary: str
    components: list[str] = []
    decisions: list[str] = []


StepOutput = ResearchOutput | DevelopmentOutput | ReviewOutput | DesignOutput


# --- step inputs: what the orchestrator hands an agent for one step ------------------

Score = Annotated[int, msgspec.Meta(ge=0, le=100, description="a review score out of 100")]


class ResearchInputs(msgspec.Struct, frozen=True, kw_only=True, tag="research"):
    """A researcher step's inputs: nothing beyond the task (the question is ``task.description``)."""


class DevelopInputs(msgspec.Struct, frozen=True, kw_only=True, tag="develop"):
    """A developer step that writes, tests or measures code (``implementation``, ``write_tests``,
    ``test``, ``performance_check``...): the outputs of the earlier steps its plan step names."""

    research_results: ResearchOutput | None = None
    api_spec: DesignOutput | None = None
    implementation: DevelopmentOutput | None = None


class FixInputs(msgspec.Struct, frozen=True, kw_only=True, tag="fix"):
    """A developer ``fix`` step: the reviewer's findings to fix, the ids the conflict policy
    decided must be fixed (no dispute allowed) and the ids it waived (leave them alone)."""

    findings: list[Issue] = []
    must_fix: list[str] = []
    waived: list[str] = []


class ReviewInputs(msgspec.Struct, frozen=True, kw_only=True, tag="review"):
    """A reviewer step: the passing score, the waived finding ids, the developer's latest test
    run (None before any) and the earlier outputs its plan step names."""

    threshold: Score
    waived: list[str] = []
    tests: TestReport | None = None
    research_results: ResearchOutput | None = None
    performance: DevelopmentOutput | None = None


# tagged by ``type``: "research" | "develop" | "fix" | "review"
StepInputs = ResearchInputs | DevelopInputs | FixInputs | ReviewInputs


class Usage(msgspec.Struct, frozen=True, kw_only=True):
    """Model usage of one step or plan (all zero for builtin brains and template plans)."""

    model: str = ""
    prompt_tokens: int = 0
    completion_tokens: int = 0
    requests: int = 0
    cost_usd: float = 0.0


class Timings(msgspec.Struct, frozen=True, kw_only=True):
    queued_at: float
    started_at: float
    finished_at: float

    @property
    def duration(self) -> float:
        return max(0.0, self.finished_at - self.started_at)


class StepStarted(Message, frozen=True, kw_only=True, tag="step_started"):
    """An agent instance took a work item (lets the orchestrator trace and health-check).

    ``run_id`` is unique per run: a redelivered item run again by the same
    instance (a restarted container keeps its instance id) is a new run, so
    the re-run is seen and traced instead of being swallowed by dedup.
    """

    task_id: TaskId
    step_id: str
    attempt: int
    role: AgentRole
    instance_id: str
    started_at: float
    run_id: str = ""


class StepResult(Message, frozen=True, kw_only=True, tag="step_result"):
    """What an agent produced for one (task, step, attempt)."""

    message_id: str
    task_id: TaskId
    step_id: str
    attempt: int
    role: AgentRole
    instance_id: str
    status: StepOutcome
    summary: str = ""
    output: StepOutput | None = None
    issues: list[Issue] = []
    score: int | None = None
    artifacts: dict[str, ArtifactRef] = {}
    timings: Timings
    usage: Usage = Usage()
    error: str | None = None
    # False when the error says another attempt cannot help (``CadreError.non_retryable``):
    # the orchestrator then ends the step at once instead of re-dispatching it.
    retryable: bool = True
    run_id: str = ""
    # the full output in the object store, when ``output`` was shortened to keep messages
    # and the workflow state small (diffs, long texts): see shared/bus/outputs.py
    output_ref: ArtifactRef | None = None


StepMessage = StepStarted | StepResult


# --- orchestration ------------------------------------------------------------


class PlanStep(msgspec.Struct, frozen=True, kw_only=True):
    """One node of a plan DAG. ``inputs`` maps an input name to an earlier step id."""

    id: str
    role: Role
    task_type: str
    description: str
    depends_on: list[str] = []
    inputs: dict[str, str] = {}
    review_loop: bool = False


class Plan(msgspec.Struct, frozen=True, kw_only=True):
    template: str
    source: Literal["template", "planner"] = "template"
    steps: list[PlanStep]
    usage: Usage = Usage()  # the LLM planner's model usage (zero for a template plan)


class Conflict(msgspec.Struct, frozen=True, kw_only=True):
    """A disagreement between agents and how the policy decided it."""

    step_id: str
    issue_id: str
    developer_position: str
    developer_concern: Concern
    reviewer_position: str
    reviewer_concern: Concern
    winner: Literal["developer", "reviewer"]
    rule: str
    decision: str


RecoveryKind = Literal["timeout", "failure", "undeliverable"]


class Recovery(msgspec.Struct, frozen=True, kw_only=True):
    """One failure-recovery episode (spec: check health, re-assign, notify, adjust, log).

    ``kind`` says what triggered it: a passed deadline, a failed result, or a
    work item the broker gave up on (MaxDeliver).
    """

    step_id: str
    reason: str
    failed_attempt: int
    failed_instance: str | None
    instance_health: str
    new_attempt: int
    delay_s: float
    new_deadline: float
    at: float
    kind: RecoveryKind = "failure"


# The kinds of trace events and metric events Cadre sends. On the wire ``kind`` stays a string
# (its schema lists these): a newer sender may add a kind, and a reader ignores kinds it does not
# know (the monitor counts them as ignored). Code that sends them is checked against these lists.
EventKind = Literal[
    "received",
    "plan_fallback",
    "planned",
    "delegated",
    "step_started",
    "step_completed",
    "review",
    "step_failed",
    "late_result",
    "result_refused",
    "fix_requested",
    "approved",
    "conflict_resolved",
    "dispute_overruled",
    "delayed",
    "completed",
    "failed",
    "rejected",
    "cancelled",
]
EVENT_KINDS: tuple[str, ...] = get_args(EventKind)
# after one of these, nothing more is published for the task
FinalEventKind = Literal["completed", "failed", "rejected", "cancelled"]
FINAL_EVENT_KINDS: tuple[str, ...] = get_args(FinalEventKind)
MetricKind = Literal[
    "step_completed",
    "step_failed",
    "delegated",
    "decomposed",
    "conflict_resolved",
    "reassigned",
    "retry",
    "review_verdict",
    "research_used",
    "task_finished",
]
METRIC_KINDS: tuple[str, ...] = get_args(MetricKind)


class TaskEvent(Message, frozen=True, kw_only=True, tag="event"):
    """One transition of a task, on ``cadre.events.<task_id>.<kind>``.

    ``text`` is the human trace line in the spec's style.
    """

    task_id: str
    kind: Annotated[
        str,
        msgspec.Meta(
            description="what happened; today one of: "
            + ", ".join(EVENT_KINDS)
            + " (the last four end the task). Ignore kinds you do not know."
        ),
    ]
    text: str
    at: float
    seq: int = 0
    step_id: str | None = None
    role: str | None = None
    attempt: int | None = None
    score: int | None = None
    plan: Plan | None = None
    conflict: Conflict | None = None
    recovery: Recovery | None = None
    detail: str = ""


RunOutcome = Literal["applied", "not_applied", "no_result"]


class StepRun(msgspec.Struct, frozen=True, kw_only=True):
    """One run of a step by an agent instance: an attempt may run more than once (redelivery)."""

    run_id: str
    attempt: int
    instance_id: str
    started_at: float = 0.0
    finished_at: float = 0.0
    # applied: its result is the step's result; not_applied: its result came late or
    # for a superseded attempt; no_result: it started but no result was seen
    outcome: RunOutcome = "no_result"
    status: str = ""


class StepRecord(msgspec.Struct, frozen=True, kw_only=True):
    """The aggregated record of one executed step in the final result."""

    step_id: str
    role: Role
    task_type: str
    description: str
    status: str
    attempts: int
    instance_id: str | None
    summary: str
    output: StepOutput | None = None
    issues: list[Issue] = []
    score: int | None = None
    duration_s: float = 0.0
    usage: Usage = Usage()
    error: str | None = None
    # every run of the step (more than one when an attempt was re-run or retried)
    runs: list[StepRun] = []
    applied_run: str | None = None
    output_ref: ArtifactRef | None = None


class FinalResult(Message, frozen=True, kw_only=True, tag="result"):
    """The aggregated output of a task, on ``cadre.result.<task_id>``."""

    task_id: str
    status: Literal["completed", "failed", "rejected", "cancelled"]
    approved: bool
    reason: str = ""
    description: str = ""
    task_type: str = ""
    plan: Plan | None = None
    steps: list[StepRecord] = []
    score_history: list[int] = []
    conflicts: list[Conflict] = []
    recoveries: list[Recovery] = []
    timings_by_role: dict[str, float] = {}
    artifacts: dict[str, ArtifactRef] = {}
    usage: Usage = Usage()
    report_markdown: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    # findings a review loop left open: they need a human or an LLM developer
    needs_attention: list[Issue] = []
    # step ids that ran more than once (re-runs or retries): see each step's ``runs``
    rerun_steps: list[str] = []


# --- operations -----------------------------------------------------------------


class Heartbeat(Message, frozen=True, kw_only=True, tag="heartbeat"):
    role: Role | Literal["monitor"]
    instance_id: str
    at: float
    started_at: float
    status: Literal["idle", "busy", "draining"] = "idle"
    in_flight: int = 0
    current: list[str] = []
    interval: float = 2.0
    # the instance's consumer loop is alive and taking work (None: a service that consumes nothing)
    pulling: bool | None = None


class MetricEvent(Message, frozen=True, kw_only=True, tag="metric"):
    """One measurable fact; the monitor folds these into the spec's figures (``MetricKind``)."""

    kind: Annotated[
        str,
        msgspec.Meta(
            description="today one of: "
            + ", ".join(METRIC_KINDS)
            + ". Readers ignore kinds they do not know."
        ),
    ]
    role: Role
    instance_id: str
    at: float
    task_id: str | None = None
    step_id: str | None = None
    attempt: int | None = None
    duration_s: float | None = None
    issues_found: int | None = None
    approved: bool | None = None
    first_round: bool | None = None
    value: float | None = None
    usage: Usage = Usage()


class DeadLetter(Message, frozen=True, kw_only=True, tag="dead_letter"):
    """A message no service could use, kept with the reason."""

    service: str
    subject: str
    reason: str
    payload: str
    received_at: float
    headers: dict[str, str] = {}


class CancelRequest(Message, frozen=True, kw_only=True, tag="cancel"):
    task_id: str  # checked by the orchestrator, which answers a clear refusal for a non-id
    step_id: str | None = None
    attempt: int | None = None
    reason: str = "cancelled by user"


class CancelReply(Message, frozen=True, kw_only=True, tag="cancel_reply"):
    task_id: str
    accepted: bool
    reason: str = ""


class ErrorReply(Message, frozen=True, kw_only=True, tag="error"):
    """A request/reply error answer."""

    code: str
    message: str


# --- one typed decoder per subject family --------------------------------------------

_T = TypeVar("_T")


class BoundedDecoder(Generic[_T]):
    """A typed JSON decoder whose every failure is a ``msgspec.DecodeError``/``ValidationError``.

    msgspec raises ``RecursionError`` for input nested past about 1000 levels; that is bad
    input too, so it is refused like any other undecodable message (and dead-lettered by the
    consumer), never an exception a caller does not expect.
    """

    __slots__ = ("_decoder", "type")

    def __init__(self, tp: Any) -> None:  # a Struct type, or a Union alias such as StepMessage
        self.type = tp
        self._decoder: msgspec.json.Decoder[_T] = msgspec.json.Decoder(tp)

    def decode(self, data: bytes | bytearray | memoryview | str) -> _T:
        try:
            return self._decoder.decode(data)
        except RecursionError as exc:
            raise msgspec.DecodeError("JSON nested too deeply to decode") from exc


task_decoder: BoundedDecoder[TaskSubmission] = BoundedDecoder(TaskSubmission)
work_decoder: BoundedDecoder[WorkItem] = BoundedDecoder(WorkItem)
step_decoder: BoundedDecoder[StepMessage] = BoundedDecoder(StepMessage)
event_decoder: BoundedDecoder[TaskEvent] = BoundedDecoder(TaskEvent)
result_decoder: BoundedDecoder[FinalResult] = BoundedDecoder(FinalResult)
heartbeat_decoder: BoundedDecoder[Heartbeat] = BoundedDecoder(Heartbeat)
metric_decoder: BoundedDecoder[MetricEvent] = BoundedDecoder(MetricEvent)
dead_letter_decoder: BoundedDecoder[DeadLetter] = BoundedDecoder(DeadLetter)
cancel_decoder: BoundedDecoder[CancelRequest] = BoundedDecoder(CancelRequest)
cancel_reply_decoder: BoundedDecoder[CancelReply] = BoundedDecoder(CancelReply)
error_decoder: BoundedDecoder[ErrorReply] = BoundedDecoder(ErrorReply)
