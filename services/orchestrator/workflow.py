"""The workflow engine: pure transitions over ``WorkflowState``.

Each transition mutates the state it is given and appends what must be
published (work items, events, metrics, cancels, the final result) to the
state's outbox. No I/O here: the service loads the state from KV, calls one
transition, writes the state back with a revision check, then flushes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from services.orchestrator import trace
from services.orchestrator.design import design
from services.orchestrator.policy import ConflictPolicy
from services.orchestrator.report import final_result
from services.orchestrator.state import Outgoing, StepState, WorkflowState
from shared.protocol import (
    CancelRequest,
    DevelopmentOutput,
    Dispute,
    Issue,
    MetricEvent,
    Plan,
    Recovery,
    ResearchOutput,
    ReviewOutput,
    StepResult,
    StepStarted,
    TaskEvent,
    TaskSubmission,
    WorkItem,
    encode,
    new_id,
)
from shared.subjects import Subjects

__all__ = ["Engine", "EngineConfig"]

logger = logging.getLogger(__name__)

HealthProbe = Callable[[str | None], str]


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

    # --- outbox helpers ----------------------------------------------------------------
    def _emit(self, st: WorkflowState, kind: str, text: str, now: float, **fields: Any) -> None:
        st.seq += 1
        event = TaskEvent(task_id=st.task_id, kind=kind, text=text, at=now, seq=st.seq, **fields)
        st.outbox.append(
            Outgoing(
                id=f"{st.task_id}.ev.{st.seq}",
                subject=self.subjects.events(st.task_id, kind),
                data=encode(event),
            )
        )

    def _metric(self, st: WorkflowState, kind: str, now: float, **fields: Any) -> None:
        st.seq += 1
        metric = MetricEvent(
            kind=kind, role="orchestrator", instance_id=self.instance_id, at=now, task_id=st.task_id, **fields
        )
        st.outbox.append(
            Outgoing(
                id=f"{st.task_id}.m.{st.seq}",
                subject=self.subjects.metrics("orchestrator"),
                data=encode(metric),
            )
        )

    def _cancel(self, st: WorkflowState, step: StepState | None, reason: str) -> None:
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
        self._emit(st, "received", trace.received(sub.task.description), now)
        if note:
            self._emit(st, "plan_fallback", f"[Orchestrator] {note}", now, detail=note)
        self._emit(st, "planned", trace.planned(plan, decompose_s), now, plan=plan)
        self._metric(st, "decomposed", now, duration_s=decompose_s)
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
                        self._run_inline(st, step, now)
                        progressed = True
                    else:
                        self._dispatch(st, step, now)
        if all(s.status == "completed" for s in st.steps):
            self._finish(st, now, "completed", "")

    def _run_inline(self, st: WorkflowState, step: StepState, now: float) -> None:
        research = next(
            (
                s.result.output
                for s in st.steps
                if s.id in step.inputs.values() and s.result and isinstance(s.result.output, ResearchOutput)
            ),
            None,
        )
        output = design(st.submission, research)
        step.inline_output = msgspec.to_builtins(output)
        step.status = "completed"
        step.attempt = 1
        step.dispatched_at = step.started_at = step.finished_at = now
        lines = "\n".join(f"  - {d}" for d in [output.summary, *output.decisions])
        self._emit(
            st,
            "step_completed",
            f"[Orchestrator] (self) {step.description}:\n{lines}",
            now,
            step_id=step.id,
            role="orchestrator",
        )

    def _inputs_for(self, st: WorkflowState, step: StepState) -> dict[str, Any]:
        data: dict[str, Any] = dict(st.submission.task.input_data)
        data.pop("files", None)  # carried as the workspace artifact instead
        for name, source_id in step.inputs.items():
            source = st.step(source_id)
            if source is None:
                continue
            if source.inline_output is not None:
                data[name] = source.inline_output
            elif source.result is not None and source.result.output is not None:
                data[name] = msgspec.to_builtins(source.result.output)
        if step.role == "reviewer":
            data["threshold"] = self.config.review_threshold
            data["waived"] = list(st.waived)
            if st.latest_tests is not None:
                data["tests"] = msgspec.to_builtins(st.latest_tests)
        data.update(step.input_data)
        return data

    def _dispatch(self, st: WorkflowState, step: StepState, now: float) -> None:
        step.attempt += 1
        step.status = "running"
        step.instance_id = None
        step.dispatched_at = now
        step.first_dispatched_at = step.first_dispatched_at or now
        step.deadline = now + self.config.step_deadline
        sub = st.submission
        item = WorkItem(
            message_id=new_id("msg"),
            to_agent=step.role,  # type: ignore[arg-type]
            task_type=step.task_type,
            priority=sub.priority,
            context=sub.context,
            task=msgspec.structs.replace(
                sub.task, description=step.description, input_data=self._inputs_for(st, step)
            ),
            expected_output=sub.expected_output,
            task_id=st.task_id,
            step_id=step.id,
            attempt=step.attempt,
            deadline=step.deadline,
            created_at=now,
            workspace=st.workspace,
            avoid_instances=list(step.avoid),
        )
        st.outbox.append(
            Outgoing(
                id=f"{st.task_id}.{step.id}.{step.attempt}.work",
                subject=self.subjects.work(step.role, sub.priority),
                data=encode(item),
            )
        )
        inputs = [f"{n} (from {s})" for n, s in step.inputs.items()]
        if "findings" in step.input_data:
            inputs.append(f"{len(step.input_data['findings'])} reviewer findings")
        text = trace.delegated(step.role, step.description, sub.context, inputs, step.attempt)
        self._emit(st, "delegated", text, now, step_id=step.id, role=step.role, attempt=step.attempt)
        self._metric(st, "delegated", now, step_id=step.id, attempt=step.attempt)

    # --- agent messages --------------------------------------------------------------------------
    def on_step_message(self, st: WorkflowState, msg: StepStarted | StepResult, now: float) -> bool:
        """Apply a started notice or a result. Returns False when nothing changed."""
        step = st.step(msg.step_id)
        if isinstance(msg, StepStarted):
            if step is None or step.status != "running" or step.attempt != msg.attempt:
                return False
            step.instance_id = msg.instance_id
            step.started_at = msg.started_at
            self._emit(
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
            self._emit(
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
        elif msg.status == "unsupported":
            step.result = msg
            step.status = "unsupported"
            step.finished_at = now
            self._emit(
                st,
                "step_failed",
                trace.returned(msg),
                now,
                step_id=step.id,
                role=msg.role,
                attempt=msg.attempt,
            )
            self._finish(
                st, now, "failed", f"step {step.id} ({step.role}) cannot be done: {msg.error or msg.summary}"
            )
            return True
        else:
            self._emit(
                st,
                "step_failed",
                trace.returned(msg),
                now,
                step_id=step.id,
                role=msg.role,
                attempt=msg.attempt,
            )
            self._recover(st, step, now, f"Failed: {msg.error or msg.summary}", health="reported failure")
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
        self._emit(
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
            self._review_verdict(st, step, out, now)
        elif isinstance(out, DevelopmentOutput) and out.disputes and step.task_type == "fix":
            self._resolve_disputes(st, step, out.disputes, now)

    # --- review loop -----------------------------------------------------------------------------
    def _review_verdict(self, st: WorkflowState, step: StepState, out: ReviewOutput, now: float) -> None:
        st.score_history.append(out.score)
        blocking = [i for i in out.issues if i.severity == "HIGH" and i.id not in st.waived]
        approved = out.score >= self.config.review_threshold and not blocking
        origin = step.origin or step.id
        self._metric(
            st,
            "review_verdict",
            now,
            step_id=step.id,
            approved=approved,
            first_round=step.round == 0,
            value=float(out.score),
        )
        history = " → ".join(str(s) for s in st.score_history)
        if approved:
            st.approved = True
            self._emit(
                st,
                "approved",
                f"[Orchestrator] {origin} approved (score {out.score}/100; history {history})",
                now,
                step_id=step.id,
                score=out.score,
            )
            return
        st.approved = False
        if step.round >= self.config.review_max_rounds:
            self._finish(
                st,
                now,
                "failed",
                f"review cap reached: {origin} not approved after {step.round} fix rounds "
                f"(scores {history}; threshold {self.config.review_threshold}; "
                f"{len(blocking)} HIGH finding(s) open)",
            )
            return
        findings = [i for i in out.issues if i.id not in st.waived]
        n = step.round + 1
        fix = StepState(
            id=f"{origin}.fix{n}",
            role="developer",
            task_type="fix",
            description=f"Fix security issues: address the reviewer's {len(findings)} findings from {step.id}",
            depends_on=[step.id],
            input_data={
                "findings": msgspec.to_builtins(findings),
                "must_fix": [i for i in st.must_fix if any(f.id == i for f in findings)],
                "waived": list(st.waived),
            },
            origin=origin,
            round=n,
        )
        plan_step = st.step(origin)
        rereview = StepState(
            id=f"{origin}.review{n + 1}",
            role="reviewer",
            task_type=plan_step.task_type if plan_step else step.task_type,
            description=f"Re-review after fix round {n}: {plan_step.description if plan_step else step.description}",
            depends_on=[fix.id],
            review_loop=True,
            origin=origin,
            round=n,
        )
        self._insert_after(st, step, [fix, rereview], rewire_to=rereview.id)
        why = (
            [f"score {out.score} < {self.config.review_threshold}"]
            if out.score < self.config.review_threshold
            else []
        )
        why += [f"{len(blocking)} HIGH finding(s) open"] if blocking else []
        self._emit(
            st,
            "fix_requested",
            f"[Orchestrator] Review of {origin} not approved ({'; '.join(why)}): "
            f"fix round {n} of {self.config.review_max_rounds}",
            now,
            step_id=fix.id,
            score=out.score,
        )

    def _insert_after(self, st: WorkflowState, step: StepState, new: list[StepState], rewire_to: str) -> None:
        """Insert steps after ``step``; whatever depended on ``step`` now waits for ``rewire_to``."""
        new_ids = {s.id for s in new}
        for other in st.steps:
            if other.id not in new_ids and step.id in other.depends_on:
                other.depends_on = [rewire_to if d == step.id else d for d in other.depends_on]
        idx = st.steps.index(step) + 1
        st.steps[idx:idx] = new

    # --- conflicts --------------------------------------------------------------------------------
    def _resolve_disputes(
        self, st: WorkflowState, step: StepState, disputes: list[Dispute], now: float
    ) -> None:
        findings = msgspec.convert(step.input_data.get("findings", []), list[Issue])
        by_id = {i.id: i for i in findings}
        already_forced = set(step.input_data.get("must_fix", []))
        must: list[Issue] = []
        for dispute in disputes:
            issue = by_id.get(dispute.issue_id)
            if issue is None:
                continue
            if issue.id in already_forced:
                self._emit(
                    st,
                    "dispute_overruled",
                    f"[Orchestrator] {issue.rule} was already decided: must fix",
                    now,
                    step_id=step.id,
                )
                continue
            conflict = self.config.policy.decide(step.id, issue, dispute)
            st.conflicts.append(conflict)
            text = "\n".join(
                [
                    f'[Developer]: "{conflict.developer_position}" ({conflict.developer_concern})',
                    f'[Reviewer]: "{conflict.reviewer_position}" ({conflict.reviewer_concern})',
                    f"[Orchestrator] Resolution by policy {self.config.policy.text}: rule {conflict.rule}",
                    f"Final Decision: {conflict.decision}",
                ]
            )
            self._emit(st, "conflict_resolved", text, now, step_id=step.id, conflict=conflict)
            self._metric(st, "conflict_resolved", now, step_id=step.id)
            if conflict.winner == "developer":
                st.waived.append(issue.id)
            else:
                st.must_fix.append(issue.id)
                must.append(issue)
        if must:
            forced = StepState(
                id=f"{step.id}.must",
                role="developer",
                task_type="fix",
                description=f"Fix security issues decided by policy (must fix {len(must)}): "
                + "; ".join(f"{i.rule} at {i.file}:{i.line}" for i in must),
                depends_on=[step.id],
                input_data={
                    "findings": msgspec.to_builtins(must),
                    "must_fix": [i.id for i in must],
                    "waived": list(st.waived),
                },
                origin=step.origin,
                round=step.round,
            )
            self._insert_after(st, step, [forced], rewire_to=forced.id)

    # --- failure recovery --------------------------------------------------------------------------
    def on_tick(self, st: WorkflowState, now: float, health: HealthProbe) -> bool:
        """Recover every running step past its deadline. Returns False when nothing changed."""
        if st.status != "running":
            return False
        changed = False
        for step in list(st.steps):
            if step.status == "running" and step.deadline and now > step.deadline:
                took = now - step.dispatched_at
                self._recover(
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
        self._recover(st, step, now, reason, health(step.instance_id))
        self.advance(st, now)
        return True

    def _recover(self, st: WorkflowState, step: StepState, now: float, reason: str, health: str) -> None:
        """Spec recovery: check health, re-assign, notify the delay, adjust the timeline, log."""
        failed_instance = step.instance_id
        self._cancel(st, step, reason)
        if step.attempt >= self.config.max_attempts:
            step.status = "failed"
            step.finished_at = now
            self._finish(
                st,
                now,
                "failed",
                f"step {step.id} ({step.role}) failed after {step.attempt} attempts: {reason}",
            )
            return
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
            new_deadline=now + self.config.step_deadline,
            at=now,
        )
        st.recoveries.append(rec)
        # adjust the timeline: running siblings keep their work but get the same slack
        for other in st.steps:
            if other is not step and other.status == "running":
                other.deadline = max(other.deadline, rec.new_deadline)
        deadline_text = time.strftime("%H:%M:%S", time.gmtime(rec.new_deadline)) + " UTC"
        self._emit(
            st,
            "delayed",
            trace.recovery(step.role, rec, reason, deadline_text),
            now,
            step_id=step.id,
            role=step.role,
            attempt=step.attempt,
            recovery=rec,
        )
        self._metric(
            st, "reassigned" if "Timeout" in reason else "retry", now, step_id=step.id, attempt=step.attempt
        )
        logger.warning(
            "recovery task=%s step=%s attempt=%d reason=%s health=%s",
            st.task_id,
            step.id,
            step.attempt,
            reason,
            health,
        )
        step.status = "pending"
        self._dispatch(st, step, now)

    # --- the end -------------------------------------------------------------------------------------
    def cancel(self, st: WorkflowState, now: float, reason: str) -> bool:
        if st.status != "running":
            return False
        for step in st.steps:
            if step.status == "running":
                step.status = "cancelled"
        self._cancel(st, None, reason)
        self._finish(st, now, "cancelled", reason)
        return True

    def _finish(self, st: WorkflowState, now: float, status: str, reason: str) -> None:
        if st.status != "running":
            return
        st.status = status
        st.reason = reason
        st.finished_at = now
        for step in st.steps:
            if step.status == "running":
                self._cancel(st, step, f"task {status}")
                step.status = "cancelled"
        result = final_result(st)
        st.outbox.append(
            Outgoing(id=f"{st.task_id}.result", subject=self.subjects.result(st.task_id), data=encode(result))
        )
        if status == "completed":
            text = "[Orchestrator] → Final Output:\n  - Aggregated results\n  - Final report\n  - " + (
                "Ready for deployment" if st.approved or not st.score_history else "Not approved"
            )
        else:
            text = f"[Orchestrator] Task {status}: {reason}"
        self._emit(st, status, text, now, detail=reason)
        self._metric(st, "task_finished", now, value=1.0 if status == "completed" else 0.0)
