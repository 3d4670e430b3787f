"""Wiring only: ``python -m services.monitor`` runs one monitor instance."""

from __future__ import annotations

from contextlib import AsyncExitStack

from services.monitor.service import MonitorService
from services.monitor.settings import MonitorSettings
from shared.bus.core import Bus
from shared.bus.service import run_service


async def build(settings: MonitorSettings, bus: Bus, stack: AsyncExitStack) -> MonitorService:
    return MonitorService(bus, settings)


if __name__ == "__main__":
    run_service("monitor", MonitorSettings, build)
