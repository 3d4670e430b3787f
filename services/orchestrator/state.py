"""Workflow state as kept in the KV bucket (one key per task, written with revision checks).

``outbox`` holds messages decided by a transition but not yet confirmed
published: the state is written first, then the outbox is flushed (every
message carries a dedup id), then cleared. A crash in between is repaired on
restart by flushing again.
"""

from __future__ import annotations

from typing import Literal

import msgspec

from shared.bus.outputs import shorten
from shared.contract.protocol import (
    ArtifactRef,
    Conflict,
    FixInputs,
    Issue,
    Plan,
    Recovery,
    ReviewOutput,
    Role,
    StepOutput,
    StepResult,
    StepRun,
    TaskSubmission,
    TestReport,
)

__all__ = [
    "compact",
    "Outgoing",
    "StepState",
    "StepStatus",
    "WorkflowState",
    "WorkflowStatus",
    "state_decoder",
    "encode_state",
    "TERMINAL",
]

StepStatus = Literal["pending", "running", "completed", "failed", "unsupported", "cancelled"]
WorkflowStatus = Literal["running", "completed", "failed", "cancelled"]

TERMINAL: frozenset[StepStatus] = frozenset({"completed", "failed", "unsupported", "cancelled"})


class Outgoing(msgspec.Struct, frozen=True, kw_only=True):
    """One message to publish, with its dedup id.

    ``stream``: the flush awaits the store's ack; otherwise it is sent without waiting
    (a metric, which its stream still stores and deduplicates, or a cancel broadcast).
    """

    id: str
    subject: str
    data: bytes
    stream: bool = True


class StepState(msgspec.Struct, kw_only=True):
    """One step of the workflow: a plan step, or one added by the review loop or a conflict."""

    id: str
    role: Role
    task_type: str
    description: str
    depends_on: list[str] = []
    inputs: dict[str, str] = {}
    review_loop: bool = False
    status: StepStatus = "pending"
    attempt: int = 0
    instance_id: str | None = None
    dispatched_at: float = 0.0
    first_dispatched_at: float = 0.0
    started_at: float = 0.0
    deadline: float = 0.0
    fix: FixInputs | None = None  # a review-loop fix step: the findings it is given
    avoid: list[str] = []
    origin: str | None = None  # the plan step a review-loop step belongs to
    round: int = 0
    result: StepResult | None = None
    inline_output: StepOutput | None = None  # a step the orchestrator ran itself (design)
    finished_at: float = 0.0
    runs: list[StepRun] = []  # every run seen, re-runs of one attempt included


class WorkflowState(msgspec.Struct, kw_only=True):
    task_id: str
    # the client that submitted the task, from the subject it submitted on (the server
    # enforces each client user's name there): its events, result and downloads go under it
    client: str = "client"
    submission: TaskSubmission
    plan: Plan
    steps: list[StepState]
    status: WorkflowStatus = "running"
    reason: str = ""
    workspace: ArtifactRef | None = None
    latest_tests: TestReport | None = None
    score_history: list[int] = []
    conflicts: list[Conflict] = []
    recoveries: list[Recovery] = []
    waived: list[str] = []
    must_fix: list[str] = []
    late_results: list[str] = []
    needs_attention: list[Issue] = []  # findings a review loop left open
    approved: bool = False
    seq: int = 0  # the last trace event's number: events only, so it is contiguous
    metric_seq: int = 0  # numbers metrics' dedup ids, apart from the events
    outbox: list[Outgoing] = []
    outbox_at: float = 0.0  # when the outbox was last written (its entries are at most this old)
    started_at: float = 0.0
    finished_at: float = 0.0
    delay_total: float = 0.0

    def step(self, step_id: str) -> StepState | None:
        return next((s for s in self.steps if s.id == step_id), None)


state_decoder = msgspec.json.Decoder(WorkflowState)
_encoder = msgspec.json.Encoder()


def encode_state(state: WorkflowState) -> bytes:
    return _encoder.encode(state)


def compact(state: WorkflowState) -> None:
    """Drop what an ended task no longer needs from its state: step inputs, bulky outputs.

    Used when a state would not fit one KV value; outputs keep a short copy
    (their full text stays in each result's ``output_ref`` when it has one).
    """
    sub = state.submission
    state.submission = msgspec.structs.replace(sub, task=msgspec.structs.replace(sub.task, input_data={}))
    for step in state.steps:
        step.fix = None
        res = step.result
        if res is not None:
            out = shorten(res.output, 2048) if res.output is not None else None
            if isinstance(out, ReviewOutput) and len(out.issues) > 20:
                out = msgspec.structs.replace(out, issues=out.issues[:20])
            step.result = msgspec.structs.replace(res, output=out, issues=[])
    state.late_results = state.late_results[-50:]
    # work items of an ending task are moot (its steps are cancelled); events and results stay
    state.outbox = [o for o in state.outbox if not (o.id.endswith(".work") and len(o.data) > 64 * 1024)]
