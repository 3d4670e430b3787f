"""Wiring only: ``python -m services.orchestrator`` runs one orchestrator instance."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

from services.orchestrator.service import OrchestratorService
from shared.agent.runtime import run_service
from shared.bus.core import Bus
from shared.bus.logs import setup_logging
from shared.bus.settings import Settings
from shared.contract.protocol import Plan, TaskSubmission


def main() -> None:
    settings = Settings(role="orchestrator")
    setup_logging(f"orchestrator:{settings.instance_id}", settings.log_level)

    async def run() -> int:
        async with AsyncExitStack() as stack:
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

            bus = await Bus.open(settings, f"cadre-orchestrator-{settings.instance_id}")
            stack.push_async_callback(bus.close)
            return await run_service(OrchestratorService(bus, settings, planner=planner), settings)

    sys.exit(asyncio.run(run()))


if __name__ == "__main__":
    main()
