"""Wiring only: ``python -m services.orchestrator`` runs one orchestrator instance."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from services.orchestrator.service import OrchestratorService
from services.orchestrator.settings import OrchestratorSettings
from shared.bus.core import Bus
from shared.bus.service import run_service
from shared.contract.protocol import Plan, TaskSubmission


async def build(settings: OrchestratorSettings, bus: Bus, stack: AsyncExitStack) -> OrchestratorService:
    """The orchestrator, with the LLM planner when ``CADRE_LLM_BASE_URL`` names a model endpoint."""
    planner: Callable[[TaskSubmission], Awaitable[Plan]] | None = None
    if settings.llm_base_url:
        from services.orchestrator.planner import plan_with_llm
        from shared.agent.llm import LLMClient

        client = LLMClient(settings)
        stack.push_async_callback(client.aclose)

        def planner(sub: TaskSubmission) -> Awaitable[Plan]:
            return plan_with_llm(
                client,
                sub.task.description,
                sub.task.requirements,
                sub.context,
                has_workspace=sub.workspace is not None,
            )

    return OrchestratorService(bus, settings, planner=planner)


if __name__ == "__main__":
    run_service("orchestrator", OrchestratorSettings, build)
