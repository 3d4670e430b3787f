"""Who may say what about a step: a step message is applied only when it matches the step it claims.

The server already binds a result to its sender's role: each agent user may
publish only on ``step.result.<its role>.<task>`` (deploy/nats/accounts.conf).
This is the orchestrator's own check behind it, for deployments without those
permissions and for what a subject cannot say: the message's role must be the
subject's role and the step's role, its attempt must have been dispatched, and
a result must come from an instance that started a run of its attempt.
A refused message changes nothing but the trace: a ``result_refused`` event on
the task, and a dead letter with the reason (the service sends that).
"""

from __future__ import annotations

from dataclasses import dataclass

from services.orchestrator.state import WorkflowState
from services.orchestrator.workflow import Engine
from shared.contract.protocol import StepResult, StepStarted
from shared.contract.subjects import Subjects

__all__ = ["Guard", "subject_mismatch", "starter_mismatch", "step_mismatch"]

StepMessage = StepStarted | StepResult


def subject_mismatch(subjects: Subjects, subject: str, msg: StepMessage) -> str | None:
    """Why the subject a step message came on contradicts the message, or None."""
    source = subjects.step_source(subject)
    if source is None:
        return f"step message on {subject!r}, not on {subjects.prefix}.step.result.<role>.<task_id>"
    if source.role != msg.role:
        return f"the message claims role {msg.role!r} but was sent under role {source.role!r}"
    if source.task_id != msg.task_id:
        return f"the message claims task {msg.task_id!r} but was sent under task {source.task_id!r}"
    return None


def step_mismatch(st: WorkflowState, msg: StepMessage) -> str | None:
    """Why a step message does not belong to the step it names, or None when it may be applied."""
    step = st.step(msg.step_id)
    if step is None:
        return f"task {st.task_id} has no step {msg.step_id!r}"
    if step.role != msg.role:
        return f"step {step.id} was given to the {step.role}, not to a {msg.role}"
    if msg.attempt < 1 or msg.attempt > step.attempt:
        return f"attempt {msg.attempt} of step {step.id} was never dispatched (latest attempt {step.attempt})"
    return starter_mismatch(st, msg)


def starter_mismatch(st: WorkflowState, msg: StepMessage) -> str | None:
    """Why a result does not come from an instance that started a run of its attempt, or None.

    Every run of an attempt announces itself (``StepStarted``) before its result; a
    result from an instance that started no run of it is not that attempt's. The
    notice may still be held by another orchestrator (it is written with the task's
    next write there), so the service defers this refusal for a few deliveries.
    """
    step = st.step(msg.step_id)
    if step is None or not isinstance(msg, StepResult):
        return None
    starters = sorted({r.instance_id for r in step.runs if r.attempt == msg.attempt})
    if starters and msg.instance_id not in starters:
        return (
            f"attempt {msg.attempt} of step {step.id} was started by {', '.join(starters)}, "
            f"not by {msg.instance_id!r}"
        )
    return None


@dataclass
class Guard:
    """A workflow transition that applies ``msg`` only when it matches its step.

    ``refused`` holds the reason after a refusal, so the caller can dead-letter
    the message; ``subject_reason`` is a refusal decided from the subject alone.
    """

    engine: Engine
    msg: StepMessage
    subject_reason: str | None = None
    may_defer: bool = False  # a result from an unlisted starter waits (``deferred``) instead of a refusal
    refused: str | None = None
    deferred: str | None = None

    def __call__(self, st: WorkflowState, now: float) -> bool:
        msg = self.msg
        self.refused = self.deferred = None  # decided again on every try (a conflict re-reads)
        reason = self.subject_reason or step_mismatch(st, msg)
        if (
            reason is not None
            and self.may_defer
            and st.status == "running"
            and reason == starter_mismatch(st, msg)
        ):
            self.deferred = reason
            return False
        if reason is None:
            return self.engine.on_step_message(st, msg, now)
        self.refused = reason
        if st.status != "running":  # nothing may follow a task's final event: the dead letter says it
            return False
        kind = "started" if isinstance(msg, StepStarted) else "result"
        key = f"refused:{msg.step_id}:{msg.attempt}:{msg.instance_id}:{kind}:{msg.role}"
        if key in st.late_results:  # a redelivery of a message already refused: trace it once
            return False
        st.late_results.append(key)
        self.engine.emit.event(
            st,
            "result_refused",
            f"[Orchestrator] Refused a {msg.role} {kind} for {msg.step_id} attempt {msg.attempt} "
            f"from {msg.instance_id}: {reason}",
            now,
            step_id=msg.step_id,
            role=msg.role,
            attempt=msg.attempt,
            detail=reason,
        )
        return True
