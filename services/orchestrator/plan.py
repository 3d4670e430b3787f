"""Decomposition: a task becomes a plan DAG, from a workflow template kept as a data file.

Templates live in ``templates/<task_type>.yaml``; ``{description}`` in a step's
description is filled from the task. ``validate_plan`` checks any plan (from a
template or from the LLM planner) against the roles, for a proper DAG, and
that each named input is one the step's typed inputs have (``inputs.py``).
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import msgspec
import yaml

from services.orchestrator.inputs import wiring_error
from shared.contract.errors import PlanError
from shared.contract.protocol import ROLES, Plan, PlanStep

__all__ = ["Template", "templates", "plan_from_template", "validate_plan", "TEMPLATE_DIR"]

TEMPLATE_DIR = Path(__file__).parent / "templates"


class Template(msgspec.Struct, frozen=True, kw_only=True):
    name: str
    description: str
    steps: list[PlanStep]
    requires_workspace: bool = False


@cache
def templates() -> dict[str, Template]:
    """Every workflow template, by name (read once)."""
    found: dict[str, Template] = {}
    for path in sorted(TEMPLATE_DIR.glob("*.yaml")):
        raw: Any = yaml.safe_load(path.read_text())
        try:
            tpl = msgspec.convert(raw, Template)
        except msgspec.ValidationError as exc:
            raise PlanError(f"template {path.name} is invalid: {exc}") from exc
        validate_plan(Plan(template=tpl.name, steps=tpl.steps))
        found[tpl.name] = tpl
    return found


def plan_from_template(task_type: str, description: str) -> Plan:
    """The plan for a task type, with the task's description filled in."""
    tpl = templates().get(task_type)
    if tpl is None:
        known = ", ".join(sorted(templates()))
        raise PlanError(f"unknown task_type {task_type!r}: known workflow templates are {known}")
    steps = [
        msgspec.structs.replace(step, description=step.description.format(description=description))
        for step in tpl.steps
    ]
    return Plan(template=tpl.name, source="template", steps=steps)


def validate_plan(plan: Plan) -> None:
    """Raise ``PlanError`` unless the plan is a non-empty DAG over known roles with typed inputs."""
    if not plan.steps:
        raise PlanError("plan has no steps")
    ids = [s.id for s in plan.steps]
    if len(set(ids)) != len(ids):
        raise PlanError(f"plan has duplicate step ids: {sorted({i for i in ids if ids.count(i) > 1})}")
    known = set(ids)
    for step in plan.steps:
        if step.role not in ROLES:
            raise PlanError(f"step {step.id!r} has unknown role {step.role!r}")
        for dep in [*step.depends_on, *step.inputs.values()]:
            if dep not in known:
                raise PlanError(f"step {step.id!r} depends on unknown step {dep!r}")
    roles = {s.id: s.role for s in plan.steps}
    for step in plan.steps:
        for name, source in step.inputs.items():
            why = wiring_error(step.id, step.role, step.task_type, name, roles[source])
            if why is not None:
                raise PlanError(why)
    # Kahn's algorithm: every step must become ready
    deps = {s.id: set(s.depends_on) for s in plan.steps}
    done: set[str] = set()
    while len(done) < len(deps):
        ready = [sid for sid, d in deps.items() if sid not in done and d <= done]
        if not ready:
            cyclic = sorted(set(deps) - done)
            raise PlanError(f"plan has a dependency cycle among {cyclic}")
        done.update(ready)
