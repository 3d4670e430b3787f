"""Delegation: turning a ready step into a ``WorkItem`` (or running it inline).

``Engine.advance`` calls these for every pending step whose dependencies are
done. An agent step gets a fresh attempt number and deadline, and typed
inputs (``StepInputs``, built by ``inputs.py``): the outputs of the steps it
names in ``inputs``, a fix step's findings, and for reviewers the threshold,
the waived findings and the developer's latest test report. The user's own
``task.input_data`` goes on beside them, as submitted. The ``design`` step is
the orchestrator's own and completes at once (see ``design.py``).
"""

from __future__ import annotations

import logging

import msgspec

from services.orchestrator import trace
from services.orchestrator.config import Ending, EngineConfig
from services.orchestrator.design import design
from services.orchestrator.emit import Emitter
from services.orchestrator.inputs import step_inputs, upstream_output
from services.orchestrator.state import StepState, WorkflowState
from shared.contract.protocol import ResearchOutput, WorkItem, encode, new_id

__all__ = ["run_inline", "user_data", "dispatch"]

logger = logging.getLogger(__name__)


def run_inline(emit: Emitter, st: WorkflowState, step: StepState, now: float) -> None:
    """Do an ``orchestrator`` step here: derive the design from the research output."""
    research = upstream_output(st, step, "research_results", ResearchOutput)
    output = design(st.submission, research)
    step.inline_output = output
    step.status = "completed"
    step.attempt = 1
    step.dispatched_at = step.started_at = step.finished_at = now
    lines = "\n".join(f"  - {d}" for d in [output.summary, *output.decisions])
    emit.event(
        st,
        "step_completed",
        f"[Orchestrator] (self) {step.description}:\n{lines}",
        now,
        step_id=step.id,
        role="orchestrator",
    )


def user_data(st: WorkflowState) -> dict[str, object]:
    """The work item's ``task.input_data``: the user's own data, as submitted, never a control value.

    Only inline ``files`` are left out: they travel as the workspace artifact.
    """
    return {k: v for k, v in st.submission.task.input_data.items() if k != "files"}


def dispatch(
    config: EngineConfig, emit: Emitter, st: WorkflowState, step: StepState, now: float
) -> Ending | None:
    """Start the step's next attempt: publish its work item, a ``delegated`` event and metric.

    A work item too large for one message (it also waits in the state's outbox)
    cannot be delegated: the step fails and the task ends with the sizes.
    """
    step.attempt += 1
    step.status = "running"
    step.instance_id = None
    step.dispatched_at = now
    step.first_dispatched_at = step.first_dispatched_at or now
    step.deadline = now + config.step_deadline
    sub = st.submission
    item = WorkItem(
        message_id=new_id("msg"),
        to_agent=step.role,  # type: ignore[arg-type]
        task_type=step.task_type,
        priority=sub.priority,
        context=sub.context,
        task=msgspec.structs.replace(sub.task, description=step.description, input_data=user_data(st)),
        expected_output=sub.expected_output,
        task_id=st.task_id,
        step_id=step.id,
        attempt=step.attempt,
        deadline=step.deadline,
        created_at=now,
        workspace=st.workspace,
        avoid_instances=list(step.avoid),
        inputs=step_inputs(config, st, step),
    )
    size = len(encode(item))
    if size > config.max_result_bytes:
        step.status = "failed"
        step.finished_at = now
        return Ending(
            "failed",
            f"step {step.id} ({step.role}) cannot be delegated: its work item is {size} bytes, over the "
            f"{config.max_result_bytes}-byte bound for one message (its inputs are too large)",
        )
    emit.work(st, step, item)
    inputs = [f"{n} (from {s})" for n, s in step.inputs.items()]
    if step.fix is not None:
        inputs.append(f"{len(step.fix.findings)} reviewer findings")
    text = trace.delegated(step.role, step.description, sub.context, inputs, step.attempt)
    emit.event(st, "delegated", text, now, step_id=step.id, role=step.role, attempt=step.attempt)
    emit.metric(st, "delegated", now, step_id=step.id, attempt=step.attempt)
    return None
