"""Scripted test brains, plugged in through the same Brain interface as the real ones.

They are selected with ``CADRE_BRAIN=tests.brains:<Name>`` and steered by the
work item's ``task.input_data`` (so one process can play several scripts).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from shared.brains import BrainResult, StepContext
from shared.protocol import WorkItem
from shared.settings import Settings


class EchoBrain:
    """Completes every step, saying which instance did it.

    ``input_data.hold_file``: while that file exists, the step waits (lets a
    test kill or stop the instance mid-work). ``input_data.crash``: raise.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def run(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        data = item.task.input_data
        if data.get("crash"):
            raise RuntimeError("scripted crash")
        hold = data.get("hold_file")
        if hold:
            while Path(hold).exists():
                await asyncio.sleep(0.05)
        return BrainResult("completed", f"done by {ctx.instance_id}: {item.task.description}")
