"""The engine's settings and the one decision its helpers hand back: ending the task.

The helpers (``dispatch.py``, ``review.py``, ``recovery.py``) take the config
and the ``Emitter`` rather than the ``Engine``, and return an ``Ending`` when
the task must end; ``Engine`` applies it. So the helpers do not import the
engine and the engine alone finishes tasks.
"""

from __future__ import annotations

from dataclasses import dataclass

from services.orchestrator.policy import ConflictPolicy
from services.orchestrator.state import WorkflowStatus

__all__ = ["EngineConfig", "Ending"]


@dataclass(frozen=True)
class Ending:
    """A helper's decision that the task ends now, with this status and reason."""

    status: WorkflowStatus
    reason: str


@dataclass(frozen=True)
class EngineConfig:
    step_deadline: float = 1800.0
    max_attempts: int = 3
    review_threshold: int = 90
    review_max_rounds: int = 3
    policy: ConflictPolicy = ConflictPolicy()
    # the server's message limit (nc.max_payload): the workflow state (one KV value)
    # and the final result must fit in one message
    max_message_bytes: int = 1024 * 1024

    @property
    def max_state_bytes(self) -> int:
        """Room for the state in a KV value: the message limit less a margin for headers."""
        return self.max_message_bytes - max(4096, self.max_message_bytes // 16)

    @property
    def max_result_bytes(self) -> int:
        """Bound on one outbox message (final result, work item): it waits in the state's
        outbox (base64: 4/3 of its size) next to the rest of the state."""
        return self.max_message_bytes // 4
