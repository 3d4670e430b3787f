"""What the orchestrator is configured by: the engine, the limits at the door, the planner.

Extends ``BusSettings``; ``LLMSettings`` is the endpoint the LLM planner uses
(``CADRE_LLM_BASE_URL`` set: plans are asked of the model). Same ``CADRE_*``
names as ever.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from shared.agent.settings import LLMSettings
from shared.bus.settings import SETTINGS_CONFIG, BusSettings, CommaList
from shared.contract.protocol import Concern

__all__ = ["OrchestratorSettings"]


class OrchestratorSettings(BusSettings, LLMSettings):
    """One orchestrator instance."""

    model_config = SETTINGS_CONFIG

    # --- the engine -------------------------------------------------------------
    step_deadline: float = Field(
        30 * 60.0, description="a step still running after this times out and is recovered (s)"
    )
    max_attempts: int = Field(3, description="runs of one step before it fails")
    review_threshold: int = Field(90, ge=0, le=100, description="passing review score out of 100")
    review_max_rounds: int = Field(3, description="review -> fix rounds before the task needs attention")
    conflict_policy: CommaList[Concern] = Field(
        ["security", "correctness", "performance", "style"],
        description="which concern wins a dispute, first wins (a,b,...)",
    )
    tick_interval: float = Field(1.0, description="how often deadlines are checked (s)")
    workflow_retention: float = Field(
        24 * 3600.0,
        description="delete a finished workflow's KV key this long after it ended (s); its trace"
        " and final result stay on the events stream for events_max_age",
    )
    planner: Literal["template", "llm"] = Field(
        "template",
        description="template: a matching plan template, else the model (when CADRE_LLM_BASE_URL is set);"
        " llm: the model first",
    )

    # --- intake limits (checked at the door; docs/security.md) --------------------
    max_description_bytes: int = Field(8 * 1024, description="task.description, UTF-8 bytes")
    max_requirements: int = Field(100, description="how many task.requirements")
    max_requirement_bytes: int = Field(2 * 1024, description="one requirement, UTF-8 bytes")
    max_input_bytes: int = Field(64 * 1024, description="task.input_data plus context, as JSON")
    max_input_depth: int = Field(16, description="nesting of objects/arrays in input_data and context")
