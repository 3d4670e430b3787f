"""Workflow state as kept in the KV bucket (one key per task, written with revision checks).

``outbox`` holds messages decided by a transition but not yet confirmed
published: the state is written first, then the outbox is flushed (every
message carries a dedup id), then cleared. A crash in between is repaired on
restart by flushing again.
"""

from __future__ import annotations

from typing import Any

import msgspec

from shared.protocol import (
    ArtifactRef,
    Conflict,
    Plan,
    Recovery,
    StepResult,
    TaskSubmission,
    TestReport,
)

__all__ = ["Outgoing", "StepState", "WorkflowState", "state_decoder", "encode_state", "TERMINAL"]

TERMINAL = frozenset({"completed", "failed", "unsupported", "cancelled"})


class Outgoing(msgspec.Struct, frozen=True, kw_only=True):
    """One message to publish: on a stream with a dedup id, or as a core NATS broadcast."""

    id: str
    subject: str
    data: bytes
    stream: bool = True


class StepState(msgspec.Struct, kw_only=True):
    """One step of the workflow: a plan step, or one added by the review loop or a conflict."""

    id: str
    role: str
    task_type: str
    description: str
    depends_on: list[str] = []
    inputs: dict[str, str] = {}
    review_loop: bool = False
    status: str = "pending"  # pending | running | completed | failed | unsupported | cancelled
    attempt: int = 0
    instance_id: str | None = None
    dispatched_at: float = 0.0
    first_dispatched_at: float = 0.0
    started_at: float = 0.0
    deadline: float = 0.0
    input_data: dict[str, Any] = {}
    avoid: list[str] = []
    origin: str | None = None  # the plan step a review-loop step belongs to
    round: int = 0
    result: StepResult | None = None
    inline_output: Any = None  # a step the orchestrator ran itself (design)
    finished_at: float = 0.0


class WorkflowState(msgspec.Struct, kw_only=True):
    task_id: str
    submission: TaskSubmission
    plan: Plan
    steps: list[StepState]
    status: str = "running"  # running | completed | failed | cancelled
    reason: str = ""
    workspace: ArtifactRef | None = None
    latest_tests: TestReport | None = None
    score_history: list[int] = []
    conflicts: list[Conflict] = []
    recoveries: list[Recovery] = []
    waived: list[str] = []
    must_fix: list[str] = []
    late_results: list[str] = []
    approved: bool = False
    seq: int = 0
    outbox: list[Outgoing] = []
    started_at: float = 0.0
    finished_at: float = 0.0
    delay_total: float = 0.0

    def step(self, step_id: str) -> StepState | None:
        return next((s for s in self.steps if s.id == step_id), None)


state_decoder = msgspec.json.Decoder(WorkflowState)
_encoder = msgspec.json.Encoder()


def encode_state(state: WorkflowState) -> bytes:
    return _encoder.encode(state)
