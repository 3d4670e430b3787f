"""Wiring only: `python -m services.monitor` runs one monitor instance."""

from __future__ import annotations

import asyncio
import sys

from services.monitor.service import MonitorService
from shared.agent.runtime import run_service
from shared.bus.core import Bus
from shared.bus.logs import setup_logging
from shared.bus.settings import Settings


def main() -> None:
    settings = Settings(role="monitor")
    setup_logging(f"monitor:{settings.instance_id}", settings.log_level)

    async def run() -> int:
        bus = await Bus.open(settings, f"cadre-monitor-{settings.instance_id}")
        try:
            return await run_service(MonitorService(bus, settings), settings)
        finally:
            await bus.close()

    sys.exit(asyncio.run(run()))


if __name__ == "__main__":
    main()
