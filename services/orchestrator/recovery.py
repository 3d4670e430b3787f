"""Failure recovery: the spec's five actions for a step that failed, timed out or was undeliverable.

``Engine.on_tick`` (deadline passed), ``Engine.on_undeliverable`` (JetStream
MaxDeliver advisory) and a ``failed`` step result all end here: 1) the
holder's health comes from the monitor's heartbeats (``HealthProbe``), 2) the
old attempt is cancelled and the step re-dispatched as attempt+1, asking the
failed instance to leave it to another, 3) a ``delayed`` event reports the
delay, 4) running siblings get the same deadline slack, 5) it is logged and
counted (``reassigned`` when the holder lost the item: a timeout or an
undeliverable item; ``retry`` after a failed result). The trigger is data
(``RecoveryKind``), carried on the ``Recovery`` record. After ``max_attempts``
the task fails with the reason.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from services.orchestrator import trace
from services.orchestrator.config import Ending, EngineConfig
from services.orchestrator.dispatch import dispatch
from services.orchestrator.emit import Emitter
from services.orchestrator.state import StepState, WorkflowState
from shared.contract.protocol import Recovery, RecoveryKind

__all__ = ["HealthProbe", "recover"]

logger = logging.getLogger(__name__)

HealthProbe = Callable[[str | None], str]
"""Instance id (or None) -> a health word from heartbeats, e.g. ``healthy`` / ``unresponsive``."""


def recover(
    config: EngineConfig,
    emit: Emitter,
    st: WorkflowState,
    step: StepState,
    now: float,
    reason: str,
    health: str,
    kind: RecoveryKind,
) -> Ending | None:
    """Spec recovery: check health, re-assign, notify the delay, adjust the timeline, log.

    Returns the task's ``Ending`` when the step is out of attempts.
    """
    failed_instance = step.instance_id
    emit.cancel(st, step, reason)
    if step.attempt >= config.max_attempts:
        step.status = "failed"
        step.finished_at = now
        return Ending(
            "failed", f"step {step.id} ({step.role}) failed after {step.attempt} attempts: {reason}"
        )
    delay = max(0.0, now - step.dispatched_at)
    st.delay_total += delay
    if failed_instance and failed_instance not in step.avoid:
        step.avoid.append(failed_instance)
    rec = Recovery(
        step_id=step.id,
        reason=reason,
        failed_attempt=step.attempt,
        failed_instance=failed_instance,
        instance_health=health,
        new_attempt=step.attempt + 1,
        delay_s=delay,
        new_deadline=now + config.step_deadline,
        at=now,
        kind=kind,
    )
    st.recoveries.append(rec)
    # adjust the timeline: running siblings keep their work but get the same slack
    for other in st.steps:
        if other is not step and other.status == "running":
            other.deadline = max(other.deadline, rec.new_deadline)
    deadline_text = time.strftime("%H:%M:%S", time.gmtime(rec.new_deadline)) + " UTC"
    emit.event(
        st,
        "delayed",
        trace.recovery(step.role, rec, reason, deadline_text),
        now,
        step_id=step.id,
        role=step.role,
        attempt=step.attempt,
        recovery=rec,
    )
    emit.metric(
        st, "retry" if kind == "failure" else "reassigned", now, step_id=step.id, attempt=step.attempt
    )
    logger.warning(
        "recovery kind=%s task=%s step=%s attempt=%d reason=%s health=%s",
        kind,
        st.task_id,
        step.id,
        step.attempt,
        reason,
        health,
    )
    step.status = "pending"
    return dispatch(config, emit, st, step, now)
