"""The LLM planner: a free-form task becomes a plan DAG, checked before anyone runs it.

The model proposes steps (id, role, task_type, description, depends_on); this
module validates them against the roles and the task types each role serves,
checks the graph (unique ids, known dependencies, no cycle) with the same
``validate_plan`` the templates pass, and requires every reviewer step to
review something a developer produced. Anything wrong raises ``PlanError``
with the reason; the orchestrator then falls back to a template and says so.
"""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import msgspec

from services.orchestrator.inputs import accepted
from services.orchestrator.plan import validate_plan
from shared.agent.llm import LLMClient
from shared.contract.errors import LLMError, PlanError
from shared.contract.protocol import ROLES, Plan, PlanStep

__all__ = ["plan_with_llm", "PLANNABLE", "PlanReply", "PlanReplyStep"]

logger = logging.getLogger(__name__)

# The task types a plan may give each role (fix steps come from the review loop, not the plan).
PLANNABLE: dict[str, tuple[str, ...]] = {
    "researcher": ("research",),
    "orchestrator": ("design",),
    "developer": ("implementation", "write_tests", "performance_check", "test"),
    "reviewer": ("review", "security_review", "final_review"),
}
_STEP_ID = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,47}$")

_SYSTEM = """You are the planner of a multi-agent software team. Decompose the user's task into a small
plan: a directed acyclic graph of steps, each done by one role.
Roles and the task types each can do:
- researcher: research (find best practices and libraries in the local documentation)
- orchestrator: design (derive an architecture from requirements and research)
- developer: implementation, write_tests, performance_check, test
- reviewer: review, security_review, final_review (only of code a developer step produced)
Rules: step ids are short snake_case words, unique; depends_on lists ids of earlier steps; no cycles;
every reviewer step depends (directly or through other steps) on a developer step. Prefer 3 to 8 steps.
Example: {"steps": [{"id": "analyze", "role": "researcher", "task_type": "research",
"description": "Research best practices for X", "depends_on": []}, {"id": "implement",
"role": "developer", "task_type": "implementation", "description": "Implement X",
"depends_on": ["analyze"]}, {"id": "review", "role": "reviewer", "task_type": "security_review",
"description": "Security review of X", "depends_on": ["implement"]}]}"""


class PlanReplyStep(msgspec.Struct, forbid_unknown_fields=False):
    """One step as the model proposes it (loosely typed: validated here, not by the decoder)."""

    id: str
    role: str
    task_type: str
    description: str = ""
    depends_on: list[str] = []


class PlanReply(msgspec.Struct, forbid_unknown_fields=False):
    steps: list[PlanReplyStep]


async def plan_with_llm(
    client: LLMClient,
    description: str,
    requirements: list[str],
    context: dict[str, Any],
    *,
    has_workspace: bool = False,
) -> Plan:
    """Ask the model for a plan DAG and return it validated, or raise ``PlanError`` saying why.

    ``has_workspace``: the task brings code, so a reviewer step may review it
    without a developer step before it.
    """
    user = "\n".join(
        [
            f"Task: {description}",
            "Requirements:" + "".join(f"\n- {r}" for r in requirements)
            if requirements
            else "Requirements: none",
            f"Context: {json.dumps(context, sort_keys=True, default=str)}",
            "The task comes with existing code to work on."
            if has_workspace
            else "There is no existing code.",
        ]
    )
    try:
        reply, usage = await client.chat_json(_SYSTEM, user, PlanReply)
    except LLMError as exc:
        raise PlanError(f"planner reply unusable: {exc}") from exc
    plan = msgspec.structs.replace(_to_plan(reply, description, has_workspace), usage=usage)
    logger.info(
        "llm plan accepted steps=%d tokens=%d cost_usd=%.6f",
        len(plan.steps),
        usage.prompt_tokens + usage.completion_tokens,
        usage.cost_usd,
    )
    return plan


def _to_plan(reply: PlanReply, description: str, has_workspace: bool) -> Plan:
    if not reply.steps:
        raise PlanError("the planner's plan has no steps")
    for step in reply.steps:
        if step.role not in ROLES:
            raise PlanError(f"step {step.id!r} has unknown role {step.role!r}; roles are {', '.join(ROLES)}")
        allowed = PLANNABLE[step.role]
        if step.task_type not in allowed:
            raise PlanError(
                f"step {step.id!r}: role {step.role} cannot do task_type {step.task_type!r}"
                f" (it can do {', '.join(allowed)})"
            )
        if not _STEP_ID.match(step.id):
            raise PlanError(f"step id {step.id!r} must be a short word of letters, digits, '_' or '-'")
    by_id = {s.id: s for s in reply.steps}
    steps = [
        PlanStep(
            id=s.id,
            role=s.role,  # type: ignore[arg-type]  # checked against ROLES above
            task_type=s.task_type,
            description=s.description.strip() or description,
            depends_on=list(dict.fromkeys(s.depends_on)),
            review_loop=s.role == "reviewer",
        )
        for s in reply.steps
    ]
    plan = Plan(template="llm", source="planner", steps=steps)
    validate_plan(plan)  # unique ids, known dependencies, acyclic
    ancestors = _ancestors(plan)
    for planned in plan.steps:
        if planned.role == "reviewer" and not has_workspace:
            if not any(by_id[a].role == "developer" for a in ancestors[planned.id]):
                raise PlanError(
                    f"reviewer step {planned.id!r} does not depend on a developer step: nothing to review"
                )
    order = [s.id for s in plan.steps]
    steps = [msgspec.structs.replace(s, inputs=_inputs(s, ancestors[s.id], by_id, order)) for s in steps]
    return Plan(template="llm", source="planner", steps=steps)


def _ancestors(plan: Plan) -> dict[str, set[str]]:
    deps = {s.id: set(s.depends_on) for s in plan.steps}
    memo: dict[str, set[str]] = {}

    def walk(sid: str) -> set[str]:
        if sid not in memo:
            found: set[str] = set()
            for d in deps[sid]:
                found |= {d, *walk(d)}
            memo[sid] = found
        return memo[sid]

    return {sid: walk(sid) for sid in deps}


def _inputs(
    step: PlanStep, ancestors: set[str], by_id: dict[str, PlanReplyStep], order: list[str]
) -> dict[str, str]:
    """Wire earlier outputs in as the templates do: research results, and the design as api_spec,
    where the step's typed inputs have the field (a researcher or fix step takes neither)."""
    takes = accepted(step.role, step.task_type)
    latest = sorted(ancestors, key=order.index)
    inputs: dict[str, str] = {}
    research = [a for a in latest if by_id[a].role == "researcher"]
    if research and "research_results" in takes:
        inputs["research_results"] = research[-1]
    design = [a for a in latest if by_id[a].role == "orchestrator"]
    if design and "api_spec" in takes:
        inputs["api_spec"] = design[-1]
    return inputs
