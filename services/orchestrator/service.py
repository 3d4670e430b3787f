"""The orchestrator service: intake, step results, deadlines, cancel — all state in KV.

Every change to a workflow goes through ``WorkflowStore.mutate`` (``store.py``):
cached state, one revision-checked KV write per transition, the outbox
published after it. This module wires the consumers to it: submissions
(intake), step messages (a ``StepStarted`` is held for the task's next write,
a result applied through the provenance guard), max-deliveries advisories,
deadline ticks and cancel requests. Different tasks run concurrently; messages
of one task are applied in stream order. That keeps a killed orchestrator
resumable and lets several instances run side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.errors import KeyWrongLastSequenceError
from nats.micro.request import Request

from services.orchestrator import intake, provenance
from services.orchestrator.plan import plan_from_template, templates, validate_plan
from services.orchestrator.policy import ConflictPolicy
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import Cached, WorkflowStore
from services.orchestrator.workflow import Engine, EngineConfig
from shared.bus.consumer import DECODE_ERRORS, Delivery, Rejected, SupervisedConsumer
from shared.bus.core import Bus
from shared.bus.outputs import offload_step_output
from shared.bus.service import Lifecycle, Pulse, ServiceShell
from shared.contract.errors import CadreError, InvalidSubjectToken, PlanError
from shared.contract.protocol import (
    CancelReply,
    Heartbeat,
    Plan,
    StepMessage,
    StepStarted,
    TaskSubmission,
    cancel_decoder,
    encode,
    heartbeat_decoder,
    now,
    step_decoder,
    task_decoder,
    work_decoder,
)
from shared.contract.subjects import token
from shared.contract.workspace import pack_files

__all__ = ["OrchestratorService"]

logger = logging.getLogger(__name__)

# How many step messages / submissions are handled at once (different tasks run concurrently).
_RESULTS_CONCURRENCY = 64
_INTAKE_CONCURRENCY = 8
# A resume leaves an outbox younger than this to the instance that wrote it (s).
_RESUME_HOLD = 5.0
# A result from an instance with no started run of its attempt waits this many deliveries for the
# notice (another orchestrator may hold it) before it is refused.
_DEFER_DELIVERIES = 4


class _MaxDeliverAdvisory(msgspec.Struct):
    """``io.nats.jetstream.advisory.v1.max_deliver`` (the fields we use)."""

    stream_seq: int
    deliveries: int = 0


_max_deliver_decoder = msgspec.json.Decoder(_MaxDeliverAdvisory)


def task_id_for(sub_task_id: str, message_id: str) -> str:
    """The user's task id, or one derived from the message id (so a re-publish maps to the same task).

    Both are validated when the submission is decoded: never rewritten here.
    """
    return sub_task_id or f"task_{message_id}"


@dataclass
class OrchestratorService(Lifecycle):
    bus: Bus
    settings: OrchestratorSettings
    planner: Callable[[TaskSubmission], Awaitable[Plan]] | None = None
    engine: Engine = field(init=False)
    _shell: ServiceShell = field(init=False)
    _heartbeats: dict[str, Heartbeat] = field(default_factory=dict, init=False)
    _hb_seen: dict[str, float] = field(default_factory=dict, init=False)
    store: WorkflowStore = field(init=False)

    def __post_init__(self) -> None:
        s = self.settings
        config = EngineConfig(
            step_deadline=s.step_deadline,
            max_attempts=s.max_attempts,
            review_threshold=s.review_threshold,
            review_max_rounds=s.review_max_rounds,
            policy=ConflictPolicy(tuple(s.conflict_policy)),
            max_message_bytes=self.bus.nc.max_payload or 1024 * 1024,  # engine: bounded state
        )
        self.engine = Engine(s.subjects, config, s.instance_id)
        self._shell = ServiceShell(self.bus, "orchestrator", s.instance_id, s.heartbeat_interval)
        self._limits = intake.Limits.from_settings(s)

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.bus.subjects
        templates()  # fail fast on a broken template file
        self.kv = await self.bus.workflows()
        self.store = WorkflowStore(
            self.bus, self.kv, self.engine, self._shell.spawn, dedup_window=self.settings.dedup_window
        )
        await self.store.watch()
        self._intake = await self.bus.js.pull_subscribe_bind(durable=s.intake_consumer, stream=s.stream_tasks)
        self._results = await self.bus.js.pull_subscribe_bind(
            durable=s.results_consumer, stream=s.stream_results
        )
        self.intake = SupervisedConsumer(
            bus=self.bus,
            name="intake",
            service="orchestrator",
            decoder=task_decoder.decode,
            handler=self._on_submission,
            on_reject=self._on_intake_reject,
            max_deliver=self.settings.max_deliver,
        )
        self.results = SupervisedConsumer(
            bus=self.bus,
            name="results",
            service="orchestrator",
            decoder=step_decoder.decode,
            handler=self._on_step_message,
            max_deliver=self.settings.max_deliver,
        )
        await self._shell.subscribe(s.heartbeat_all, self._on_heartbeat)
        advisory = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{s.stream_work}.*"
        await self._shell.subscribe(advisory, self._on_max_deliveries, queue="orchestrator")
        await self._shell.add_micro(
            "Cadre orchestrator: decompose, delegate, review loop, conflicts, recovery",
            {"cancel": (s.task_cancel_all, self._on_cancel)},
            stats={"cancel": self._stats},
        )
        await self.resume()
        self._shell.supervise(
            lambda: self.intake.run(self._intake, concurrency=_INTAKE_CONCURRENCY), "intake"
        )
        self._shell.supervise(
            lambda: self.results.run(self._results, concurrency=_RESULTS_CONCURRENCY, batch=32), "results"
        )
        self._shell.supervise(self._tick_loop, "ticks")
        self._shell.heartbeat_loop(self._pulse)
        logger.info(
            "orchestrator started instance=%s open_workflows=%d",
            self.settings.instance_id,
            len(self.store.open),
        )

    @property
    def fatal(self) -> asyncio.Event:
        """Set when a consumer or tick loop keeps dying: the process should exit non-zero."""
        return self._shell.fatal

    def _stats(self) -> dict[str, Any]:
        return {
            "consumers": {c.name: c.stats.as_dict() for c in (self.intake, self.results)},
            "loop_restarts": sum(self._shell.restarts.values()),
            "open_tasks": len(self.store.open),
            "cached_tasks": len(self.store.cache),
            "held_started": sum(len(h) for h in self.store.held.values()),  # StepStarted awaiting a write
            "workflow_io": dict(self.store.io),
        }

    async def stop(self) -> None:
        closed = await self._shell.close()  # consumers and timers first: nothing new is held after
        store = getattr(self, "store", None)
        if store is not None:
            await store.close()
        if closed:
            logger.info("orchestrator stopped")

    async def resume(self, hold_young: float = 0.0) -> None:
        """Pick up every open workflow in KV: flush what a crash left unpublished.

        A task cached here is re-read only when KV holds a newer revision (another
        instance moved it on).
        """
        try:
            keys = await self.kv.keys()
        except Exception:  # nats raises NoKeysError on an empty bucket
            keys = []
        for key in keys:
            if key in self.store.settled:
                continue
            try:
                await self.store.refresh(key)
                await self.store.mutate(key, lambda st, t: False, fresh=False, hold_young=hold_young)
            except Exception as exc:  # one bad workflow must not stop the others resuming
                logger.warning("resume failed task=%s err=%s", key, exc)
        logger.debug("resumed workflows=%d open=%d", len(keys), len(self.store.open))
        await self._purge_expired()

    async def _purge_expired(self) -> None:
        """Delete the keys of workflows that ended more than ``workflow_retention`` ago.

        Purged, a task id may run again if re-submitted; its trace and final
        result stay on the events stream, which has its own max age.
        """
        horizon = now() - self.settings.workflow_retention
        for task_id, finished_at in list(self.store.settled.items()):
            if finished_at < horizon:
                try:
                    await self.kv.purge(task_id)  # idempotent: another instance may purge it too
                except Exception as exc:  # the next resume tries again
                    logger.warning("workflow purge failed task=%s err=%s", task_id, exc)
                    continue
                del self.store.settled[task_id]
                logger.info("workflow purged task=%s ended_at=%.0f", task_id, finished_at)

    # --- intake ----------------------------------------------------------------------------------------
    async def _on_submission(self, sub: TaskSubmission, delivery: Delivery) -> None:
        t0 = time.perf_counter()
        msg = delivery.msg
        task_id = task_id_for(sub.task_id, sub.message_id)
        sub = msgspec.structs.replace(sub, task_id=task_id, created_at=sub.created_at or now())
        # who submitted it: the subject's client token, which the server's permissions enforce
        client = self.bus.subjects.client_of(msg.subject)
        if client is None:
            raise Rejected(f"a submission on {msg.subject!r}, which names no client")
        async with self.store.locks.hold(task_id):
            try:
                intake.check_submission(sub, self._limits)
                if not await intake.check_task_id(self.kv, sub, client):
                    logger.info("duplicate submission task=%s message_id=%s", task_id, sub.message_id)
                    return
                sub = await intake.check_workspace(self.bus, sub, self._limits, client)
                sub = await self._attach_inline_files(sub)
                plan, note = await self._plan(sub)
            except (PlanError, ValueError) as exc:
                await self._reject(msg, str(exc), task_id=task_id, sub=sub)
                return
            decompose_s = time.perf_counter() - t0
            st = self.engine.start(task_id, sub, plan, decompose_s, now(), note=note, client=client)
            try:
                self.store.io["writes"] += 1
                revision = await self.kv.create(task_id, self.store.encode(st))
            except KeyWrongLastSequenceError:
                try:  # accepted meanwhile (another instance): the same submission, or another's id
                    await intake.check_task_id(self.kv, sub, client)
                except intake.Refused as exc:
                    await self._reject(msg, str(exc), task_id=task_id, sub=sub)
                return
            cached = Cached(st, revision)
            self.store.cache[task_id] = cached
            await self.store.flush(task_id, cached)
        logger.info(
            "task accepted task=%s client=%s type=%s steps=%d",
            task_id,
            client,
            sub.task_type,
            len(plan.steps),
        )

    async def _on_intake_reject(self, delivery: Delivery, reason: str) -> None:
        """A submission went to the dead letters: tell the submitter (when it named a task)."""
        await self._reject(delivery.msg, reason, dead_letter=False)

    async def _attach_inline_files(self, sub: TaskSubmission) -> TaskSubmission:
        files = sub.task.input_data.get("files")
        if sub.workspace is not None or not files:
            return sub
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise ValueError("task.input_data.files must be an object of {path: text content}")
        ref = await self.bus.put_artifact(pack_files(files), description="workspace (inline files)")
        return msgspec.structs.replace(sub, workspace=ref)

    async def _plan(self, sub: TaskSubmission) -> tuple[Plan, str]:
        """The plan for a task, and a note when the planner's plan was refused."""
        tpl = templates().get(sub.task_type)
        if tpl is not None and tpl.requires_workspace and sub.workspace is None:
            raise PlanError(
                f"a {sub.task_type!r} task needs code to work on: attach a workspace "
                "(cadre submit --workspace DIR) or inline task.input_data.files"
            )
        use_planner = self.planner is not None and (self.settings.planner == "llm" or tpl is None)
        if not use_planner:
            return plan_from_template(sub.task_type, sub.task.description), ""
        assert self.planner is not None
        fallback = sub.task_type if tpl is not None else "feature"
        try:
            plan: Plan = await self.planner(sub)
            validate_plan(plan)
            return plan, ""
        except CadreError as exc:
            logger.warning("planner failed, falling back to the %s template: %s", fallback, exc)
            note = f"the LLM planner's plan was refused ({exc}); using the {fallback!r} template instead"
            return plan_from_template(fallback, sub.task.description), note

    async def _reject(
        self,
        msg: Msg,
        reason: str,
        *,
        task_id: str | None = None,
        sub: TaskSubmission | None = None,
        dead_letter: bool = True,
    ) -> None:
        await intake.refuse(self.bus, self.kv, msg, reason, task_id=task_id, sub=sub, dead_letter=dead_letter)

    # --- agent messages -------------------------------------------------------------------------------
    async def _on_step_message(self, step_msg: StepMessage, delivery: Delivery) -> None:
        try:
            token(step_msg.task_id)
        except InvalidSubjectToken as exc:
            raise Rejected(f"step message with an unusable task id: {exc}") from exc
        step_msg = await offload_step_output(self.bus, step_msg)  # engine: large outputs by reference
        # applied only when it matches its step: role (subject, message, step), attempt, instance
        guard = provenance.Guard(
            self.engine,
            step_msg,
            provenance.subject_mismatch(self.bus.subjects, delivery.subject, step_msg),
            may_defer=delivery.num_delivered < min(_DEFER_DELIVERIES, self.settings.max_deliver),
        )
        if isinstance(step_msg, StepStarted):
            # no write of its own: applied with the task's next write (usually its result's),
            # acked after it; see docs/orchestrator.md "Durability and the hot path"
            self.store.hold(step_msg, guard, delivery)
            return
        found = await self.store.mutate(step_msg.task_id, guard)
        if guard.deferred is not None:  # a decision not to apply: only ever taken on KV's copy
            found = await self.store.mutate(step_msg.task_id, guard, fresh=True)
            if guard.deferred is not None:
                raise CadreError(f"result deferred, its run's started notice not yet seen: {guard.deferred}")
        if guard.refused is not None:
            raise Rejected(f"refused: {guard.refused}")
        if found is None:
            raise Rejected(f"unknown task {step_msg.task_id!r}")

    async def _on_max_deliveries(self, msg: Msg) -> None:
        """JetStream gave up redelivering a work item: take it off the queue and re-plan the step."""
        try:
            advisory = _max_deliver_decoder.decode(msg.data)
            stored = await self.bus.js.get_msg(self.bus.subjects.stream_work, advisory.stream_seq)
            item = work_decoder.decode(stored.data or b"")
        except Exception as exc:  # noqa: BLE001 - an advisory we cannot use is logged, not fatal
            logger.warning("max-deliveries advisory not usable: %s", exc)
            return
        logger.warning(
            "work item undeliverable task=%s step=%s attempt=%d", item.task_id, item.step_id, item.attempt
        )
        try:
            await self.store.mutate(
                item.task_id,
                lambda st, t: self.engine.on_undeliverable(
                    st, item.step_id, item.attempt, advisory.deliveries, t, self.health
                ),
            )
        except Exception:  # a core callback: nothing may escape; the step's deadline still recovers it
            logger.exception("re-planning an undeliverable item failed task=%s", item.task_id)
            return
        with contextlib.suppress(Exception):
            await self.bus.js.delete_msg(self.bus.subjects.stream_work, advisory.stream_seq)

    # --- deadlines and health --------------------------------------------------------------------------
    async def _on_heartbeat(self, msg: Msg) -> None:
        with contextlib.suppress(*DECODE_ERRORS):
            hb = heartbeat_decoder.decode(msg.data)
            if hb.role != self.bus.subjects.heartbeat_role(msg.subject):
                return  # a heartbeat counts only under its own role (the server enforces who sends that)
            self._heartbeats[hb.instance_id] = hb
            self._hb_seen[hb.instance_id] = time.monotonic()

    def _forget_silent(self) -> None:
        """Drop instances silent for longer than ``monitor_forget_after`` (no slow leak)."""
        horizon = time.monotonic() - max(self.settings.monitor_forget_after, self.settings.dead_after)
        for instance_id, seen in list(self._hb_seen.items()):
            if seen < horizon:
                del self._hb_seen[instance_id]
                self._heartbeats.pop(instance_id, None)

    def health(self, instance_id: str | None) -> str:
        """Spec recovery step 1: the agent's health, from its heartbeats."""
        if instance_id is None:
            return "unknown (the item was never picked up)"
        seen = self._hb_seen.get(instance_id)
        if seen is None:
            return "unknown (no heartbeat seen)"
        age = time.monotonic() - seen
        hb = self._heartbeats[instance_id]
        if age > self.settings.dead_after:
            return f"dead (no heartbeat for {age:.1f}s)"
        return f"alive but unresponsive ({hb.status}, heartbeat {age:.1f}s ago)"

    async def _tick_loop(self) -> None:
        refresh_every = 10
        n = 0
        while True:
            await asyncio.sleep(self.settings.tick_interval)
            n += 1
            if n % refresh_every == 0:
                self._forget_silent()
                try:
                    await self.resume(_RESUME_HOLD)  # workflows another instance accepted or moved on
                except Exception:
                    logger.exception("resume failed")
            for task_id in list(self.store.open | set(self.store.held)):  # held notices: a write that failed
                try:
                    await self.store.mutate(
                        task_id, lambda st, t: self.engine.on_tick(st, t, self.health), fresh=False
                    )
                except Exception:  # one task's failure must not stop the others' deadlines
                    logger.exception("tick failed task=%s", task_id)

    def _pulse(self) -> Pulse:
        pulling = self.intake.stats.pulling and self.results.stats.pulling
        return Pulse(
            "busy" if self.store.open else "idle",
            len(self.store.open),
            sorted(self.store.open)[:20],
            pulling=pulling,
        )

    # --- cancel ------------------------------------------------------------------------------------------
    async def _on_cancel(self, req: Request) -> None:
        """Answer every cancel request with a ``CancelReply`` (or a 400 for an undecodable one)."""
        try:
            try:
                cancel = cancel_decoder.decode(req.data)
            except DECODE_ERRORS as exc:
                await req.respond_error("400", f"invalid cancel request: {exc}")
                return
            client = self.bus.subjects.client_of(req.subject)
            if client is None:
                await req.respond_error("400", f"a cancel on {req.subject!r}, which names no client")
                return
            reply = await self._cancel(client, cancel.task_id, cancel.reason)
            await req.respond(encode(reply))
        except Exception:  # the boundary: log; the requester gets what we could send
            logger.exception("cancel request failed")

    async def _cancel(self, client: str, task_id: str, reason: str) -> CancelReply:
        """Cancel ``task_id`` if ``client`` submitted it; another client's task is an unknown id to it."""
        try:
            token(task_id)
        except InvalidSubjectToken:
            why = "an empty task id" if not task_id else f"{task_id!r} is not a task id"
            return CancelReply(task_id=task_id, accepted=False, reason=f"cancel refused: {why}")
        try:
            st = await self.store.mutate(
                task_id, lambda s, t: s.client == client and self.engine.cancel(s, t, reason)
            )
        except Exception as exc:
            logger.exception("cancel failed task=%s", task_id)
            return CancelReply(
                task_id=task_id, accepted=False, reason=f"cancel failed: {type(exc).__name__}: {exc}"
            )
        if st is None or st.client != client:
            return CancelReply(task_id=task_id, accepted=False, reason="unknown task id")
        if st.status == "cancelled":
            return CancelReply(task_id=task_id, accepted=True, reason=reason)
        return CancelReply(task_id=task_id, accepted=False, reason=f"task already {st.status}")
