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

The helpers take the config and the ``Emitter``, never the engine: when a
task must end they return an ``Ending`` (``config.py``) and the engine
applies it, so only ``finish`` ends a task. ``encode`` is the size guard every
KV write goes through (bounded state: see docs/orchestrator.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import cached_property

import msgspec

from services.orchestrator import trace
from services.orchestrator.config import Ending, EngineConfig
from services.orchestrator.dispatch import dispatch, run_inline
from services.orchestrator.emit import Emitter
from services.orchestrator.recovery import HealthProbe, recover
from services.orchestrator.report import final_result
from services.orchestrator.review import no_progress, resolve_disputes, review_verdict
from services.orchestrator.state import StepState, WorkflowState, WorkflowStatus, compact, encode_state
from shared.contract.protocol import (
    DevelopmentOutput,
    Plan,
    ReviewOutput,
    RunOutcome,
    StepResult,
    StepRun,
    StepStarted,
    TaskSubmission,
    encode,
)
from shared.contract.subjects import Subjects

__all__ = ["Engine", "EngineConfig", "Ending", "run_key"]

logger = logging.getLogger(__name__)


def run_key(msg: StepStarted | StepResult) -> str:
    """The run a message belongs to (agents before run ids: one run per instance and attempt)."""
    return msg.run_id or f"{msg.instance_id}#{msg.attempt}"


def _run(step: StepState, run_id: str) -> StepRun:
    return next(
        (r for r in step.runs if r.run_id == run_id), StepRun(run_id=run_id, attempt=0, instance_id="")
    )


def _record_run(step: StepState, res: StepResult, run_id: str, outcome: RunOutcome, now: float) -> None:
    """Mark a run's result on the step (adding the run when its started notice was never seen)."""
    run = StepRun(
        run_id=run_id,
        attempt=res.attempt,
        instance_id=res.instance_id,
        started_at=res.timings.started_at,
        finished_at=res.timings.finished_at or now,
        outcome=outcome,
        status=res.status,
    )
    idx = next((n for n, r in enumerate(step.runs) if r.run_id == run_id), None)
    if idx is None:
        step.runs.append(run)
    else:
        step.runs[idx] = msgspec.structs.replace(run, started_at=step.runs[idx].started_at or run.started_at)


def _started_of(res: StepResult) -> StepStarted:
    """The started notice a result implies (same run, instance, attempt and start time)."""
    return StepStarted(
        task_id=res.task_id,
        step_id=res.step_id,
        attempt=res.attempt,
        role=res.role,
        instance_id=res.instance_id,
        started_at=res.timings.started_at,
        run_id=run_key(res),
    )


def _stale_why(step: StepState, attempt: int) -> str:
    if step.attempt != attempt:
        return f"stale attempt: the step is at attempt {step.attempt}"
    if step.result is not None:
        return "the step already has the result of another run"
    return f"step no longer running ({step.status})"


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
        self,
        task_id: str,
        sub: TaskSubmission,
        plan: Plan,
        decompose_s: float,
        now: float,
        note: str = "",
        client: str = "client",
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
        if sub.workspace is not None and "files" in sub.task.input_data:
            # inline files were packed into the workspace: the state keeps the reference only
            data = {k: v for k, v in sub.task.input_data.items() if k != "files"}
            sub = msgspec.structs.replace(sub, task=msgspec.structs.replace(sub.task, input_data=data))
        st = WorkflowState(
            task_id=task_id,
            client=client,
            submission=sub,
            plan=plan,
            steps=steps,
            workspace=sub.workspace,
            started_at=now,
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
                if st.status != "running":
                    return
                if step.status == "pending" and set(step.depends_on) <= done:
                    if step.role == "orchestrator":
                        run_inline(self.emit, st, step, now)
                        progressed = True
                    else:
                        self._end(st, now, dispatch(self.config, self.emit, st, step, now))
        if all(s.status == "completed" for s in st.steps):
            self.finish(st, now, "completed", "")

    # --- agent messages --------------------------------------------------------------------------
    def on_step_message(self, st: WorkflowState, msg: StepStarted | StepResult, now: float) -> bool:
        """Apply a started notice or a result. Returns False when nothing changed.

        Every run is recorded on its step (``runs``), a re-run of one attempt
        included. A result for a superseded attempt, a finished step or a
        second run is recorded as ``late_result`` and never applied; one that
        arrives after the task's final event goes to the dead letters instead,
        so the final event stays the last one.
        """
        if st.status != "running":
            return self._after_end(st, msg, now)
        step = st.step(msg.step_id)
        if step is None:
            return self._unknown_step(st, msg, now)
        if isinstance(msg, StepStarted):
            return self._on_started(st, step, msg, now)
        run_id = run_key(msg)
        current = step.status == "running" and step.attempt == msg.attempt
        if not current or _run(step, run_id).outcome != "no_result" or step.result is not None:
            return self._late(st, step, msg, run_id, now)
        if not any(r.run_id == run_id for r in step.runs) and msg.timings.started_at:
            # its started notice was never applied here (held by another orchestrator, or lost):
            # the result says when and where the run started, so the trace gets the line now
            self._on_started(st, step, _started_of(msg), now)
        step.instance_id = msg.instance_id
        _record_run(step, msg, run_id, "applied", now)
        if msg.status == "completed":
            self._apply_completed(st, step, msg, now)
            self.advance(st, now)
            return True
        self.emit.event(
            st, "step_failed", trace.returned(msg), now, step_id=step.id, role=msg.role, attempt=msg.attempt
        )
        if msg.status == "unsupported" or not msg.retryable:
            # a capability the brain lacks, or an error that says so: another attempt cannot help
            step.result = msg
            step.status = "unsupported" if msg.status == "unsupported" else "failed"
            step.finished_at = now
            why = "cannot be done" if msg.status == "unsupported" else "failed (not retryable)"
            self.finish(st, now, "failed", f"step {step.id} ({step.role}) {why}: {msg.error or msg.summary}")
            return True
        reason = f"Failed: {msg.error or msg.summary}"
        self._end(
            st, now, recover(self.config, self.emit, st, step, now, reason, "reported failure", "failure")
        )
        self.advance(st, now)
        return True

    def _on_started(self, st: WorkflowState, step: StepState, msg: StepStarted, now: float) -> bool:
        run_id = run_key(msg)
        if any(r.run_id == run_id for r in step.runs):
            return False
        earlier = [r for r in step.runs if r.attempt == msg.attempt]
        step.runs.append(
            StepRun(
                run_id=run_id, attempt=msg.attempt, instance_id=msg.instance_id, started_at=msg.started_at
            )
        )
        current = step.status == "running" and step.attempt == msg.attempt
        text = f"{trace.actor(msg.role)} {msg.instance_id} started {step.id} (attempt {msg.attempt}"
        if earlier:
            text += (
                f", run {len(earlier) + 1}: a re-run; earlier on {', '.join(r.instance_id for r in earlier)}"
            )
        text += ")"
        if current and step.result is None:
            step.instance_id = msg.instance_id
            step.started_at = msg.started_at
        else:
            text += " — its result will not be applied (" + _stale_why(step, msg.attempt) + ")"
        self.emit.event(
            st,
            "step_started",
            text,
            now,
            step_id=step.id,
            role=msg.role,
            attempt=msg.attempt,
            detail=f"run {run_id}" + (" (re-run)" if earlier else ""),
        )
        return True

    def _late(self, st: WorkflowState, step: StepState, msg: StepResult, run_id: str, now: float) -> bool:
        key = f"{msg.step_id}:{msg.attempt}:{run_id}"
        if key in st.late_results or _run(step, run_id).outcome == "applied":
            return False  # a copy of a result already recorded
        st.late_results.append(key)
        _record_run(step, msg, run_id, "not_applied", now)
        self._late_event(st, msg, msg.step_id, f" ({_stale_why(step, msg.attempt)})", run_id, now)
        return True

    def _late_event(
        self, st: WorkflowState, msg: StepResult, what: str, why: str, run_id: str, now: float
    ) -> None:
        """The trace line of a result that is recorded but never applied."""
        self.emit.event(
            st,
            "late_result",
            f"[Orchestrator] Recorded, not applied: {msg.role} result for {what} "
            f"attempt {msg.attempt} from {msg.instance_id}{why}",
            now,
            step_id=msg.step_id,
            role=msg.role,
            attempt=msg.attempt,
            detail=f"run {run_id}",
        )

    def _unknown_step(self, st: WorkflowState, msg: StepStarted | StepResult, now: float) -> bool:
        """A message for a step this state does not have: recorded once, never applied.

        Recording it is a change on purpose: the write is revision-checked, so a
        state that is merely behind (another orchestrator added the step, e.g. a
        fix round) is re-read and the message decided again on the fresh state.
        """
        key = f"{msg.step_id}:{msg.attempt}:{run_key(msg)}"
        key += ":started" if isinstance(msg, StepStarted) else ""
        if key in st.late_results:
            return False
        st.late_results.append(key)
        if isinstance(msg, StepResult):
            self._late_event(st, msg, f"unknown step {msg.step_id}", "", run_key(msg), now)
        return True

    def _after_end(self, st: WorkflowState, msg: StepStarted | StepResult, now: float) -> bool:
        """A message for a task that already ended: a result goes to the dead letters, once."""
        key = f"{msg.step_id}:{msg.attempt}:{run_key(msg)}"
        step = st.step(msg.step_id)
        if isinstance(msg, StepStarted):
            # an agent took the item just before the end. A run the state already lists is
            # reported; an unlisted one is kept in the dead letters, so a run whose agent dies
            # before any result (or whose notice was held until after the end) is never hidden
            if key in st.late_results or (
                step is not None and any(r.run_id == run_key(msg) for r in step.runs)
            ):
                return False
            st.late_results.append(key)
            reason = (
                f"late start: task {st.task_id} already {st.status}; {msg.instance_id} started "
                f"{msg.step_id} attempt {msg.attempt} (run {run_key(msg)}) after the final event"
            )
            self.emit.dead_letter(
                st, self.subjects.step_result(msg.role, st.task_id), encode(msg), reason, now
            )
            return True
        if key in st.late_results or (step is not None and _run(step, run_key(msg)).outcome == "applied"):
            return False  # already told, or a redelivered copy of a result the task applied
        st.late_results.append(key)
        reason = (
            f"late result: task {st.task_id} already {st.status}; {msg.role} result for {msg.step_id} "
            f"attempt {msg.attempt} from {msg.instance_id} arrived after the final event"
        )
        self.emit.dead_letter(st, self.subjects.step_result(msg.role, st.task_id), encode(msg), reason, now)
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
            self._end(st, now, review_verdict(self.config, self.emit, st, step, out, now))
        elif isinstance(out, DevelopmentOutput) and step.task_type == "fix":
            if out.disputes:
                resolve_disputes(self.config.policy, self.emit, st, step, out.disputes, now)
            elif not out.changes and step.origin is not None:
                self._end(st, now, no_progress(st, step, out))

    # --- failure detection (recovery itself is recovery.py) ----------------------------------------
    def on_tick(self, st: WorkflowState, now: float, health: HealthProbe) -> bool:
        """Recover every running step past its deadline. Returns False when nothing changed."""
        if st.status != "running":
            return False
        changed = False
        for step in list(st.steps):
            if step.status == "running" and step.deadline and now > step.deadline:
                took = now - step.dispatched_at
                reason = f"Timeout (agent took >{took:.0f}s, deadline {self.config.step_deadline:.0f}s)"
                ending = recover(
                    self.config, self.emit, st, step, now, reason, health(step.instance_id), "timeout"
                )
                self._end(st, now, ending)
                changed = True
        if changed:
            self.advance(st, now)
        return changed

    def on_undeliverable(
        self, st: WorkflowState, step_id: str, attempt: int, deliveries: int, now: float, health: HealthProbe
    ) -> bool:
        """The broker gave up on a work item (MaxDeliver): recover as for a timeout."""
        step = st.step(step_id)
        if st.status == "running" and (step is None or step.attempt < attempt):
            # this state may be behind (another instance dispatched that attempt): record it, so the
            # revision-checked write re-reads a stale state; on a current one it is noted once
            key = f"{step_id}:{attempt}:undeliverable"
            if key in st.late_results:
                return False
            st.late_results.append(key)
            return True
        if st.status != "running" or step is None or step.status != "running" or step.attempt != attempt:
            return False
        reason = f"Undeliverable (MaxDeliver: {deliveries} deliveries without an ack)"
        health_word = health(step.instance_id)
        self._end(
            st, now, recover(self.config, self.emit, st, step, now, reason, health_word, "undeliverable")
        )
        self.advance(st, now)
        return True

    # --- the size guard ----------------------------------------------------------------------------
    def encode(self, st: WorkflowState, now: float) -> bytes:
        """The state's bytes for KV, never over ``max_state_bytes``.

        Large outputs are already references (``shared/bus/outputs.py``). Should a
        state still outgrow the limit, its inline bulk is dropped (the task
        cannot go on without it) and a running task ends ``failed`` with the
        sizes as the reason; its latest workspace stays attached to the result.
        """
        data = encode_state(st)
        limit = self.config.max_state_bytes
        if len(data) <= limit:
            return data
        size = len(data)
        logger.error("workflow state too large task=%s bytes=%d limit=%d", st.task_id, size, limit)
        compact(st)
        self.finish(
            st,
            now,
            "failed",
            f"workflow state too large: {size} bytes, over the {limit}-byte limit of one message; "
            "step outputs were cut to fit and the task stopped (its partial workspace is attached)",
        )
        return encode_state(st)

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

    def _end(self, st: WorkflowState, now: float, ending: Ending | None) -> None:
        """Apply a helper's decision to end the task (``None``: it goes on)."""
        if ending is not None:
            self.finish(st, now, ending.status, ending.reason)

    def finish(self, st: WorkflowState, now: float, status: WorkflowStatus, reason: str) -> None:
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
        self.emit.result(st, final_result(st, self.config.max_result_bytes))
        if status == "completed":
            text = "[Orchestrator] → Final Output:\n  - Aggregated results\n  - Final report\n  - " + (
                "Ready for deployment" if st.approved or not st.score_history else "Not approved"
            )
        else:
            text = f"[Orchestrator] Task {status}: {reason}"
        self.emit.event(st, status, text, now, detail=reason)
        self.emit.metric(st, "task_finished", now, value=1.0 if status == "completed" else 0.0)
