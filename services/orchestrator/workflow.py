"""The workflow engine: pure transitions over ``WorkflowState``, from submit to result.

Each transition mutates the state it is given and appends what must be
published (work items, events, metrics, cancels, the final result) to the
state's outbox (``emit.py``). No I/O here: the service loads the state from
KV, calls one transition, writes the state back with a revision check, then
flushes.

A task's path through the engine:

1. ``start`` builds the state from the plan (``received``, ``planned``) and
   calls ``advance``.
2. ``advance`` runs the orchestrator's own steps inline and dispatches every
   other ready step as a ``WorkItem`` (``dispatch.py``); when every step is
   done it calls ``finish``.
3. ``on_step_message`` applies an agent's ``StepStarted`` / ``StepResult``. A
   completed review may insert fix and re-review steps, and a fix's disputes
   are decided by the conflict policy (``review.py``). A failed result, like a
   passed deadline (``on_tick``) or an undeliverable work item
   (``on_undeliverable``), goes to failure recovery (``recovery.py``).
4. ``finish`` (or ``cancel``) cancels what still runs and publishes the
   aggregated ``FinalResult`` (``report.py``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

from services.orchestrator import trace
from services.orchestrator.dispatch import dispatch, run_inline
from services.orchestrator.emit import Emitter
from services.orchestrator.policy import ConflictPolicy
from services.orchestrator.recovery import HealthProbe, recover
from services.orchestrator.report import final_result
from services.orchestrator.review import resolve_disputes, review_verdict
from services.orchestrator.state import StepState, WorkflowState
from shared.protocol import (
    DevelopmentOutput,
    Plan,
    ReviewOutput,
    StepResult,
    StepStarted,
    TaskSubmission,
)
from shared.subjects import Subjects

__all__ = ["Engine", "EngineConfig"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    step_deadline: float = 1800.0
    max_attempts: int = 3
    review_threshold: int = 90
    review_max_rounds: int = 3
    policy: ConflictPolicy = ConflictPolicy()


@dataclass(frozen=True)
class Engine:
    """Decides every transition of a workflow."""

    subjects: Subjects
    config: EngineConfig
    instance_id: str = "orchestrator"

    @cached_property
    def emit(self) -> Emitter:
        """Appends events, metrics, cancels, work items and the result to a state's outbox."""
        return Emitter(self.subjects, self.instance_id)

    # --- start ---------------------------------------------------------------------------------
    def start(
        self, task_id: str, sub: TaskSubmission, plan: Plan, decompose_s: float, now: float, note: str = ""
    ) -> WorkflowState:
        steps = [
            StepState(
                id=p.id,
                role=p.role,
                task_type=p.task_type,
                description=p.description,
                depends_on=list(p.depends_on),
                inputs=dict(p.inputs),
                review_loop=p.review_loop,
            )
            for p in plan.steps
        ]
        st = WorkflowState(
            task_id=task_id, submission=sub, plan=plan, steps=steps, workspace=sub.workspace, started_at=now
        )
        self.emit.event(st, "received", trace.received(sub.task.description), now)
        if note:
            self.emit.event(st, "plan_fallback", f"[Orchestrator] {note}", now, detail=note)
        self.emit.event(st, "planned", trace.planned(plan, decompose_s), now, plan=plan)
        self.emit.metric(st, "decomposed", now, duration_s=decompose_s)
        self.advance(st, now)
        return st

    # --- scheduling ---------------------------------------------------------------------------
    def advance(self, st: WorkflowState, now: float) -> None:
        """Run or dispatch every step whose dependencies are done; finish when all are."""
        if st.status != "running":
            return
        progressed = True
        while progressed:
            progressed = False
            done = {s.id for s in st.steps if s.status == "completed"}
            for step in st.steps:
                if step.status == "pending" and set(step.depends_on) <= done:
                    if step.role == "orchestrator":
                        run_inline(self, st, step, now)
                        progressed = True
                    else:
                        dispatch(self, st, step, now)
        if all(s.status == "completed" for s in st.steps):
            self.finish(st, now, "completed", "")

    # --- agent messages --------------------------------------------------------------------------
    def on_step_message(self, st: WorkflowState, msg: StepStarted | StepResult, now: float) -> bool:
        """Apply a started notice or a result. Returns False when nothing changed."""
        step = st.step(msg.step_id)
        if isinstance(msg, StepStarted):
            if step is None or step.status != "running" or step.attempt != msg.attempt:
                return False
            step.instance_id = msg.instance_id
            step.started_at = msg.started_at
            self.emit.event(
                st,
                "step_started",
                f"{trace.actor(msg.role)} {msg.instance_id} started {step.id} (attempt {msg.attempt})",
                now,
                step_id=step.id,
                role=msg.role,
                attempt=msg.attempt,
            )
            return True
        key = f"{msg.step_id}:{msg.attempt}:{msg.instance_id}"
        if step is None or step.status != "running" or step.attempt != msg.attempt or st.status != "running":
            if key in st.late_results:
                return False
            st.late_results.append(key)
            why = (
                "stale attempt"
                if step is not None and step.attempt != msg.attempt
                else "step no longer running"
            )
            self.emit.event(
                st,
                "late_result",
                f"[Orchestrator] Recorded, not applied: {msg.role} result for {msg.step_id} "
                f"attempt {msg.attempt} from {msg.instance_id} ({why})",
                now,
                step_id=msg.step_id,
                role=msg.role,
                attempt=msg.attempt,
            )
            return True
        step.instance_id = msg.instance_id
        if msg.status == "completed":
            self._apply_completed(st, step, msg, now)
            self.advance(st, now)
            return True
        self.emit.event(
            st, "step_failed", trace.returned(msg), now, step_id=step.id, role=msg.role, attempt=msg.attempt
        )
        if msg.status == "unsupported":
            # a capability the brain lacks: another attempt cannot help
            step.result = msg
            step.status = "unsupported"
            step.finished_at = now
            self.finish(
                st, now, "failed", f"step {step.id} ({step.role}) cannot be done: {msg.error or msg.summary}"
            )
            return True
        recover(self, st, step, now, f"Failed: {msg.error or msg.summary}", health="reported failure")
        self.advance(st, now)
        return True

    def _apply_completed(self, st: WorkflowState, step: StepState, res: StepResult, now: float) -> None:
        step.result = res
        step.status = "completed"
        step.finished_at = now
        if "workspace" in res.artifacts:
            st.workspace = res.artifacts["workspace"]
        out = res.output
        if isinstance(out, DevelopmentOutput) and out.tests is not None:
            st.latest_tests = out.tests
        kind = "review" if isinstance(out, ReviewOutput) else "step_completed"
        self.emit.event(
            st,
            kind,
            trace.returned(res),
            now,
            step_id=step.id,
            role=res.role,
            attempt=res.attempt,
            score=res.score,
        )
        if isinstance(out, ReviewOutput) and step.review_loop:
            review_verdict(self, st, step, out, now)
        elif isinstance(out, DevelopmentOutput) and out.disputes and step.task_type == "fix":
            resolve_disputes(self, st, step, out.disputes, now)

    # --- failure detection (recovery itself is recovery.py) ----------------------------------------
    def on_tick(self, st: WorkflowState, now: float, health: HealthProbe) -> bool:
        """Recover every running step past its deadline. Returns False when nothing changed."""
        if st.status != "running":
            return False
        changed = False
        for step in list(st.steps):
            if step.status == "running" and step.deadline and now > step.deadline:
                took = now - step.dispatched_at
                recover(
                    self,
                    st,
                    step,
                    now,
                    f"Timeout (agent took >{took:.0f}s, deadline {self.config.step_deadline:.0f}s)",
                    health(step.instance_id),
                )
                changed = True
        if changed:
            self.advance(st, now)
        return changed

    def on_undeliverable(
        self, st: WorkflowState, step_id: str, attempt: int, deliveries: int, now: float, health: HealthProbe
    ) -> bool:
        """The broker gave up on a work item (MaxDeliver): recover as for a timeout."""
        step = st.step(step_id)
        if st.status != "running" or step is None or step.status != "running" or step.attempt != attempt:
            return False
        reason = f"Undeliverable (MaxDeliver: {deliveries} deliveries without an ack)"
        recover(self, st, step, now, reason, health(step.instance_id))
        self.advance(st, now)
        return True

    # --- the end -------------------------------------------------------------------------------------
    def cancel(self, st: WorkflowState, now: float, reason: str) -> bool:
        """Cancel a running task at the user's request. Returns False when it already ended."""
        if st.status != "running":
            return False
        for step in st.steps:
            if step.status == "running":
                step.status = "cancelled"
        self.emit.cancel(st, None, reason)
        self.finish(st, now, "cancelled", reason)
        return True

    def finish(self, st: WorkflowState, now: float, status: str, reason: str) -> None:
        """End the task once: cancel running steps, publish the ``FinalResult`` and the final event."""
        if st.status != "running":
            return
        st.status = status
        st.reason = reason
        st.finished_at = now
        for step in st.steps:
            if step.status == "running":
                self.emit.cancel(st, step, f"task {status}")
                step.status = "cancelled"
        self.emit.result(st, final_result(st))
        if status == "completed":
            text = "[Orchestrator] → Final Output:\n  - Aggregated results\n  - Final report\n  - " + (
                "Ready for deployment" if st.approved or not st.score_history else "Not approved"
            )
        else:
            text = f"[Orchestrator] Task {status}: {reason}"
        self.emit.event(st, status, text, now, detail=reason)
        self.emit.metric(st, "task_finished", now, value=1.0 if status == "completed" else 0.0)
