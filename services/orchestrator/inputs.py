"""Step inputs: which typed inputs struct each step kind gets, and how it is filled.

A plan step names earlier steps in ``inputs`` (``{"research_results": "analyze"}``);
each name is a typed field of the step's inputs struct, fed by one role's output:

| name | from a step of role | type |
|---|---|---|
| ``research_results`` | researcher | ``ResearchOutput`` |
| ``api_spec`` | orchestrator (design) | ``DesignOutput`` |
| ``implementation`` | developer | ``DevelopmentOutput`` |
| ``performance`` | developer | ``DevelopmentOutput`` |

The kind follows the step: researcher -> ``ResearchInputs``; developer ``fix``
-> ``FixInputs`` (the review loop's findings); any other developer step ->
``DevelopInputs``; reviewer -> ``ReviewInputs`` (threshold, waived ids, the
latest test run). ``validate_plan`` refuses a name the step's kind has no
field for, or a source of the wrong role, so a template or a planner's plan
can never wire an output the agent would not read. The user's
``task.input_data`` is never part of this: it travels apart, as submitted.
"""

from __future__ import annotations

from typing import TypeVar

import msgspec

from services.orchestrator.config import EngineConfig
from services.orchestrator.state import StepState, WorkflowState
from shared.contract.protocol import (
    DesignOutput,
    DevelopInputs,
    DevelopmentOutput,
    FixInputs,
    ResearchInputs,
    ResearchOutput,
    ReviewInputs,
    Role,
    StepInputs,
    StepOutput,
)

__all__ = ["UPSTREAM", "accepted", "wiring_error", "step_inputs", "upstream_output"]

UPSTREAM: dict[str, tuple[Role, type[StepOutput]]] = {
    "research_results": ("researcher", ResearchOutput),
    "api_spec": ("orchestrator", DesignOutput),
    "implementation": ("developer", DevelopmentOutput),
    "performance": ("developer", DevelopmentOutput),
}

_O = TypeVar("_O", ResearchOutput, DevelopmentOutput, DesignOutput)


def _kind(role: Role, task_type: str) -> type[StepInputs] | None:
    """The inputs struct of a step kind (None for the orchestrator's own design step)."""
    if role == "researcher":
        return ResearchInputs
    if role == "reviewer":
        return ReviewInputs
    if role == "developer":
        return FixInputs if task_type == "fix" else DevelopInputs
    return None


def accepted(role: Role, task_type: str) -> frozenset[str]:
    """The upstream names a step of this kind takes: the fields of its inputs struct in ``UPSTREAM``."""
    kind = _kind(role, task_type)
    if kind is None:  # the design step reads the research
        return frozenset({"research_results"})
    return frozenset(f.name for f in msgspec.structs.fields(kind) if f.name in UPSTREAM)


def wiring_error(step_id: str, role: Role, task_type: str, name: str, source_role: Role) -> str | None:
    """Why a plan step may not take ``name`` from a step of ``source_role`` (None when it may)."""
    takes = accepted(role, task_type)
    if name not in takes:
        can = ", ".join(sorted(takes)) or "none"
        return f"step {step_id!r} ({role} {task_type}) has no input {name!r} (it takes: {can})"
    want = UPSTREAM[name][0]
    if source_role != want:
        return f"step {step_id!r} takes {name!r} from a {want} step, not from a {source_role} step"
    return None


def upstream_output(st: WorkflowState, step: StepState, name: str, tp: type[_O]) -> _O | None:
    """The output of the step wired in as ``name``, when it is there and of type ``tp``."""
    source = st.step(step.inputs.get(name, ""))
    if source is None:
        return None
    out = source.inline_output
    if out is None and source.result is not None:
        out = source.result.output
    return out if isinstance(out, tp) else None


def step_inputs(config: EngineConfig, st: WorkflowState, step: StepState) -> StepInputs:
    """The typed inputs of the step's work item."""
    if step.role == "reviewer":
        return ReviewInputs(
            threshold=config.review_threshold,
            waived=list(st.waived),
            tests=st.latest_tests,
            research_results=upstream_output(st, step, "research_results", ResearchOutput),
            performance=upstream_output(st, step, "performance", DevelopmentOutput),
        )
    if step.role == "developer":
        if step.task_type == "fix":
            return step.fix if step.fix is not None else FixInputs()
        return DevelopInputs(
            research_results=upstream_output(st, step, "research_results", ResearchOutput),
            api_spec=upstream_output(st, step, "api_spec", DesignOutput),
            implementation=upstream_output(st, step, "implementation", DevelopmentOutput),
        )
    return ResearchInputs()
