"""Wiring only: ``python -m services.orchestrator`` runs one orchestrator instance."""

from __future__ import annotations

import asyncio

from services.orchestrator.service import OrchestratorService
from shared.bus import Bus
from shared.logs import setup_logging
from shared.runtime import run_service
from shared.settings import Settings


def main() -> None:
    settings = Settings(role="orchestrator")
    setup_logging(f"orchestrator:{settings.instance_id}", settings.log_level)

    async def run() -> None:
        bus = await Bus.open(settings, f"cadre-orchestrator-{settings.instance_id}")
        try:
            await run_service(OrchestratorService(bus, settings), settings)
        finally:
            await bus.close()

    asyncio.run(run())


if __name__ == "__main__":
    main()
