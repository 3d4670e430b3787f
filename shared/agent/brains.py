"""The seam between the agent runtime and what a role does: the ``Brain`` protocol.

A brain gets a work item and a ``StepContext`` and returns a ``BrainResult``.
The runtime owns everything else (the bus, acks, heartbeats, cancellation,
errors). Settings pick the brain: ``builtin``, ``llm`` or ``module:attribute``.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar, runtime_checkable

from shared.agent.settings import AgentSettings
from shared.contract.errors import WrongInputs
from shared.contract.protocol import (
    ArtifactRef,
    DevelopInputs,
    FixInputs,
    Issue,
    ResearchInputs,
    ReviewInputs,
    StepOutput,
    Usage,
    WorkItem,
    new_id,
)
from shared.contract.workspace import UnpackLimits, pack_dir, unpack_to

if TYPE_CHECKING:
    from shared.bus.core import Bus

__all__ = ["Brain", "BrainResult", "StepContext", "inputs_of", "load_brain"]

logger = logging.getLogger(__name__)


@dataclass
class BrainResult:
    """What a brain returns; the runtime turns it into a ``StepResult``."""

    status: Literal["completed", "failed", "unsupported"]
    summary: str
    output: StepOutput | None = None
    issues: list[Issue] = field(default_factory=list)
    score: int | None = None
    artifacts: dict[str, ArtifactRef] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    error: str | None = None
    retryable: bool = True  # False: another attempt cannot help (the orchestrator stops the step)


_I = TypeVar("_I", ResearchInputs, DevelopInputs, FixInputs, ReviewInputs)


def inputs_of(item: WorkItem, kind: type[_I]) -> _I:
    """The item's typed inputs when they are of ``kind``; else ``WrongInputs`` (non-retryable).

    A brain reads its control values only from here, never from ``task.input_data``
    (the user's own data): the step then fails at once with a clear reason.
    """
    if isinstance(item.inputs, kind):
        return item.inputs
    got = "no inputs" if item.inputs is None else f"{type(item.inputs).__name__}"
    raise WrongInputs(f"{item.step_id} ({item.to_agent} {item.task_type})", kind.__name__, got)


@dataclass
class StepContext:
    """Per-step handle a brain uses: workspace I/O, cancellation, identity."""

    item: WorkItem
    settings: AgentSettings
    instance_id: str
    bus: Bus
    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    # unique per run: a redelivered item run again by the same instance is a new run
    run_id: str = field(default_factory=lambda: new_id("run"))
    _dirs: list[Path] = field(default_factory=list)

    async def workspace(self) -> Path:
        """A fresh local copy of the step's code workspace (empty when it has none)."""
        base = Path(self.settings.work_dir)
        base.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{self.item.step_id}-", dir=base))
        self._dirs.append(path)
        if self.item.workspace is not None:
            data = await self.bus.get_artifact(self.item.workspace)
            await asyncio.to_thread(unpack_to, data, path, UnpackLimits.from_settings(self.settings))
        return path

    async def save_workspace(self, path: Path, description: str = "workspace") -> ArtifactRef:
        """Store a workspace folder in the object store."""
        data = await asyncio.to_thread(pack_dir, path)
        return await self.bus.put_artifact(data, description=description)

    async def put_artifact(self, data: bytes, content_type: str, description: str) -> ArtifactRef:
        return await self.bus.put_artifact(data, content_type=content_type, description=description)

    def cleanup(self) -> None:
        for d in self._dirs:
            shutil.rmtree(d, ignore_errors=True)
        self._dirs.clear()


@runtime_checkable
class Brain(Protocol):
    """What a role does with one work item."""

    async def run(self, item: WorkItem, ctx: StepContext) -> BrainResult: ...


def load_brain(settings: AgentSettings, choices: dict[str, str], role: str = "") -> Brain:
    """Build the brain named by ``settings.brain``.

    ``choices`` maps ``builtin`` / ``llm`` to ``module:Class`` for the role;
    any other value is taken as a ``module:attribute`` path (test brains use it).
    """
    spec = choices.get(settings.brain, settings.brain)
    if ":" not in spec:
        raise ValueError(
            f"unknown brain {settings.brain!r}: use one of {sorted(choices)} or module:attribute"
        )
    module_name, attr = spec.split(":", 1)
    factory = getattr(importlib.import_module(module_name), attr)
    brain = factory(settings)
    if not isinstance(brain, Brain):
        raise TypeError(f"{spec} does not implement Brain.run")
    logger.info("brain loaded role=%s brain=%s", role, spec)
    return brain
