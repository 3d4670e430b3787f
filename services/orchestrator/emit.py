"""What a transition publishes, appended to the state's outbox (never sent from here).

Every record gets a deterministic dedup id so a re-flush after a crash cannot
publish twice: ``<task>.ev.<seq>`` for trace events, ``<task>.metric.<n>`` for
metrics, ``<task>.<step>.<attempt>.work`` for work items, ``<task>.result``
for the final result. Cancels are core-NATS requests (not streamed), so they
get a fresh id. The service writes the state with its outbox, then flushes it.

The event contract (docs/wire-protocol.md): ``seq`` goes up by one per event
of a task (metrics have their own counter), and the final event
(``completed`` / ``failed`` / ``cancelled``) is the last one: after it,
``event`` refuses, and what arrives late goes to the dead letters instead.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from services.orchestrator.state import Outgoing, StepState, WorkflowState
from shared.contract import textsafe
from shared.contract.protocol import (
    CancelRequest,
    DeadLetter,
    FinalResult,
    MetricEvent,
    TaskEvent,
    WorkItem,
    encode,
    new_id,
)
from shared.contract.subjects import Subjects

__all__ = ["Emitter"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Emitter:
    """Builds the outgoing messages of one orchestrator instance."""

    subjects: Subjects
    instance_id: str = "orchestrator"

    def event(self, st: WorkflowState, kind: str, text: str, now: float, **fields: Any) -> None:
        """A ``TaskEvent`` on ``events.<client>.<task>.<kind>``: one line of the task's trace.

        Once the task has ended, only its final event (kind == the end status) is taken.
        """
        if st.status != "running" and kind != st.status:
            logger.error("event %s refused: task %s already %s", kind, st.task_id, st.status)
            return
        st.seq += 1
        text = textsafe.text(text)  # names and outputs from workspaces and models: no control characters
        event = TaskEvent(task_id=st.task_id, kind=kind, text=text, at=now, seq=st.seq, **fields)
        st.outbox.append(
            Outgoing(
                id=f"{st.task_id}.ev.{st.seq}",
                subject=self.subjects.events(st.client, st.task_id, kind),
                data=encode(event),
            )
        )

    def metric(self, st: WorkflowState, kind: str, now: float, **fields: Any) -> None:
        """A ``MetricEvent`` for the monitor, as role ``orchestrator``.

        Sent without waiting for the store's ack, as the agents send theirs: the metrics
        stream still stores it, its dedup id still absorbs a re-flush, and a lost metric
        costs a figure, never a step (no round trip on the transition's path).
        """
        st.metric_seq += 1
        metric = MetricEvent(
            kind=kind, role="orchestrator", instance_id=self.instance_id, at=now, task_id=st.task_id, **fields
        )
        st.outbox.append(
            Outgoing(
                id=f"{st.task_id}.metric.{st.metric_seq}",
                subject=self.subjects.metrics("orchestrator"),
                data=encode(metric),
                stream=False,
            )
        )

    def cancel(self, st: WorkflowState, step: StepState | None, reason: str) -> None:
        """Ask agents to drop ``step``'s current attempt (or, with ``None``, the whole task)."""
        req = CancelRequest(
            task_id=st.task_id,
            step_id=step.id if step else None,
            attempt=step.attempt if step else None,
            reason=reason,
        )
        st.outbox.append(
            Outgoing(
                id=new_id("cancel"), subject=self.subjects.cancel(st.task_id), data=encode(req), stream=False
            )
        )

    def work(self, st: WorkflowState, step: StepState, item: WorkItem) -> None:
        """The ``WorkItem`` for ``step``'s current attempt on ``work.<role>.<priority>``."""
        st.outbox.append(
            Outgoing(
                id=f"{st.task_id}.{step.id}.{step.attempt}.work",
                subject=self.subjects.work(step.role, item.priority),
                data=encode(item),
            )
        )

    def result(self, st: WorkflowState, result: FinalResult) -> None:
        """The task's ``FinalResult`` on ``result.<client>.<task>``."""
        subject = self.subjects.result(st.client, st.task_id)
        st.outbox.append(Outgoing(id=f"{st.task_id}.result", subject=subject, data=encode(result)))

    def dead_letter(self, st: WorkflowState, subject: str, payload: bytes, reason: str, now: float) -> None:
        """Keep a message the task can no longer use (e.g. a result after the final event), with why."""
        record = DeadLetter(
            service="orchestrator",
            subject=subject,
            reason=reason,
            payload=payload.decode("utf-8", errors="replace"),
            received_at=now,
        )
        st.outbox.append(
            Outgoing(id=new_id("dl"), subject=self.subjects.dead_letter("orchestrator"), data=encode(record))
        )
