"""Delegation: turning a ready step into a ``WorkItem`` (or running it inline).

``Engine.advance`` calls these for every pending step whose dependencies are
done. An agent step gets a fresh attempt number and deadline, and its inputs
are assembled from the submission plus the outputs of the steps it names in
``inputs`` (reviewers also get the threshold, the waived findings and the
developer's latest test report). The ``design`` step is the orchestrator's
own and completes at once (see ``design.py``).
"""

from __future__ import annotations

import logging
from typing import Any

import msgspec

from services.orchestrator import trace
from services.orchestrator.config import Ending, EngineConfig
from services.orchestrator.design import design
from services.orchestrator.emit import Emitter
from services.orchestrator.state import StepState, WorkflowState
from shared.contract.protocol import ResearchOutput, WorkItem, encode, new_id

__all__ = ["run_inline", "step_inputs", "dispatch"]

logger = logging.getLogger(__name__)


def run_inline(emit: Emitter, st: WorkflowState, step: StepState, now: float) -> None:
    """Do an ``orchestrator`` step here: derive the design from the research output."""
    research = next(
        (
            s.result.output
            for s in st.steps
            if s.id in step.inputs.values() and s.result and isinstance(s.result.output, ResearchOutput)
        ),
        None,
    )
    output = design(st.submission, research)
    step.inline_output = msgspec.to_builtins(output)
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


def step_inputs(config: EngineConfig, st: WorkflowState, step: StepState) -> dict[str, Any]:
    """The work item's ``task.input_data``: submission data, upstream outputs, step extras."""
    data: dict[str, Any] = dict(st.submission.task.input_data)
    data.pop("files", None)  # carried as the workspace artifact instead
    for name, source_id in step.inputs.items():
        source = st.step(source_id)
        if source is None:
            continue
        if source.inline_output is not None:
            data[name] = source.inline_output
        elif source.result is not None and source.result.output is not None:
            data[name] = msgspec.to_builtins(source.result.output)
    if step.role == "reviewer":
        data["threshold"] = config.review_threshold
        data["waived"] = list(st.waived)
        if st.latest_tests is not None:
            data["tests"] = msgspec.to_builtins(st.latest_tests)
    data.update(step.input_data)
    return data


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
        task=msgspec.structs.replace(
            sub.task, description=step.description, input_data=step_inputs(config, st, step)
        ),
        expected_output=sub.expected_output,
        task_id=st.task_id,
        step_id=step.id,
        attempt=step.attempt,
        deadline=step.deadline,
        created_at=now,
        workspace=st.workspace,
        avoid_instances=list(step.avoid),
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
    if "findings" in step.input_data:
        inputs.append(f"{len(step.input_data['findings'])} reviewer findings")
    text = trace.delegated(step.role, step.description, sub.context, inputs, step.attempt)
    emit.event(st, "delegated", text, now, step_id=step.id, role=step.role, attempt=step.attempt)
    emit.metric(st, "delegated", now, step_id=step.id, attempt=step.attempt)
    return None
