"""The orchestrator service: intake, step results, deadlines, cancel — all state in KV.

Every change to a workflow goes through ``_mutate``: read the state and its
revision, apply one engine transition, write back only if the revision is
unchanged (else re-read and retry), then flush the outbox. That makes a
killed orchestrator resumable and lets two instances run side by side.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import FetchTimeoutError, KeyNotFoundError, KeyWrongLastSequenceError
from nats.micro.request import Request

from services.orchestrator.plan import plan_from_template, templates, validate_plan
from services.orchestrator.policy import ConflictPolicy
from services.orchestrator.state import Outgoing, WorkflowState, encode_state, state_decoder
from services.orchestrator.workflow import Engine, EngineConfig
from shared.bus import Bus
from shared.errors import CadreError, PlanError
from shared.outputs import offload_step_output
from shared.protocol import (
    CancelReply,
    FinalResult,
    Heartbeat,
    Plan,
    TaskEvent,
    TaskSubmission,
    cancel_decoder,
    encode,
    heartbeat_decoder,
    now,
    step_decoder,
    task_decoder,
    work_decoder,
)
from shared.service import Lifecycle, Pulse, ServiceShell
from shared.settings import Settings
from shared.workspace import pack_files

__all__ = ["OrchestratorService"]

logger = logging.getLogger(__name__)

_MUTATE_RETRIES = 50
_UNSAFE = re.compile(r"[^A-Za-z0-9_\-]")


class _LooseTask(msgspec.Struct):
    message_id: Any = None
    task_id: Any = None


_loose_decoder = msgspec.json.Decoder(_LooseTask)


class _MaxDeliverAdvisory(msgspec.Struct):
    """``io.nats.jetstream.advisory.v1.max_deliver`` (the fields we use)."""

    stream_seq: int
    deliveries: int = 0


_max_deliver_decoder = msgspec.json.Decoder(_MaxDeliverAdvisory)


def task_id_for(sub_task_id: str, message_id: str) -> str:
    """The user's task id, or one derived from the message id (so a re-publish maps to the same task)."""
    raw = sub_task_id or f"task_{message_id}"
    return _UNSAFE.sub("_", raw)[:120]


@dataclass
class OrchestratorService(Lifecycle):
    bus: Bus
    settings: Settings
    planner: Callable[[TaskSubmission], Awaitable[Plan]] | None = None
    engine: Engine = field(init=False)
    _shell: ServiceShell = field(init=False)
    _heartbeats: dict[str, Heartbeat] = field(default_factory=dict, init=False)
    _hb_seen: dict[str, float] = field(default_factory=dict, init=False)
    _open: set[str] = field(default_factory=set, init=False)
    # finished and fully flushed, with when they ended: periodic resumes skip them and
    # delete their keys once ``workflow_retention`` has passed
    _settled: dict[str, float] = field(default_factory=dict, init=False)

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

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.bus.subjects
        templates()  # fail fast on a broken template file
        self.kv = await self.bus.workflows()
        self._intake = await self.bus.js.pull_subscribe_bind(durable=s.intake_consumer, stream=s.stream_tasks)
        self._results = await self.bus.js.pull_subscribe_bind(
            durable=s.results_consumer, stream=s.stream_results
        )
        await self._shell.subscribe(s.heartbeat_all, self._on_heartbeat)
        advisory = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{s.stream_work}.*"
        await self._shell.subscribe(advisory, self._on_max_deliveries, queue="orchestrator")
        await self._shell.add_micro(
            "Cadre orchestrator: decompose, delegate, review loop, conflicts, recovery",
            {"cancel": (s.task_cancel, self._on_cancel)},
        )
        await self.resume()
        self._shell.spawn(self._loop(self._intake, self._on_submission), "intake")
        self._shell.spawn(self._loop(self._results, self._on_step_message), "results")
        self._shell.spawn(self._tick_loop(), "ticks")
        self._shell.heartbeat_loop(self._pulse)
        logger.info(
            "orchestrator started instance=%s open_workflows=%d", self.settings.instance_id, len(self._open)
        )

    async def stop(self) -> None:
        if await self._shell.close():
            logger.info("orchestrator stopped")

    async def resume(self) -> None:
        """Pick up every open workflow in KV: flush what a crash left unpublished."""
        try:
            keys = await self.kv.keys()
        except Exception:  # nats raises NoKeysError on an empty bucket
            keys = []
        for key in keys:
            if key not in self._settled:
                await self._mutate(key, lambda st, t: False)
        logger.debug("resumed workflows=%d open=%d", len(keys), len(self._open))
        await self._purge_expired()

    async def _purge_expired(self) -> None:
        """Delete the keys of workflows that ended more than ``workflow_retention`` ago.

        Purged, a task id may run again if re-submitted; its trace and final
        result stay on the events stream, which has its own max age.
        """
        horizon = now() - self.settings.workflow_retention
        for task_id, finished_at in list(self._settled.items()):
            if finished_at < horizon:
                try:
                    await self.kv.purge(task_id)  # idempotent: another instance may purge it too
                except Exception as exc:  # the next resume tries again
                    logger.warning("workflow purge failed task=%s err=%s", task_id, exc)
                    continue
                del self._settled[task_id]
                logger.info("workflow purged task=%s ended_at=%.0f", task_id, finished_at)

    # --- the one way to change a workflow --------------------------------------------------------
    async def _mutate(
        self, task_id: str, transition: Callable[[WorkflowState, float], bool]
    ) -> WorkflowState | None:
        for _ in range(_MUTATE_RETRIES):
            try:
                entry = await self.kv.get(task_id)
            except KeyNotFoundError:
                return None
            assert entry.value is not None and entry.revision is not None
            st = state_decoder.decode(entry.value)
            changed = transition(st, now())
            if changed:
                try:
                    await self.kv.update(task_id, self.engine.encode(st, now()), last=entry.revision)
                except KeyWrongLastSequenceError:
                    continue  # another instance moved it on: re-read and decide again
            if st.status == "running":
                self._open.add(task_id)
            else:
                self._open.discard(task_id)
            if st.outbox:
                await self._flush(task_id, st.outbox)
            elif st.status != "running":
                self._settled[task_id] = st.finished_at
            return st
        raise CadreError(f"workflow {task_id}: too many concurrent updates")

    async def _flush(self, task_id: str, outbox: list[Outgoing]) -> None:
        for out in outbox:
            if out.stream:
                await self.bus.js.publish(out.subject, out.data, headers={"Nats-Msg-Id": out.id})
            else:
                await self.bus.nc.publish(out.subject, out.data)
        sent = {o.id for o in outbox}

        def clear(st: WorkflowState, _t: float) -> bool:
            before = len(st.outbox)
            st.outbox = [o for o in st.outbox if o.id not in sent]
            return len(st.outbox) != before

        for _ in range(_MUTATE_RETRIES):
            try:
                entry = await self.kv.get(task_id)
            except KeyNotFoundError:
                return
            assert entry.value is not None
            st = state_decoder.decode(entry.value)
            if not clear(st, 0.0):
                return
            try:
                await self.kv.update(task_id, encode_state(st), last=entry.revision)
                return
            except KeyWrongLastSequenceError:
                continue

    # --- intake ----------------------------------------------------------------------------------------
    async def _loop(self, psub: Any, handler: Callable[[Msg], Any]) -> None:
        while True:
            try:
                msgs = await psub.fetch(10, timeout=1.0)
            except (NatsTimeoutError, FetchTimeoutError, TimeoutError):
                continue
            except Exception as exc:
                logger.warning("fetch failed err=%s", exc)
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                try:
                    await handler(msg)
                    await msg.ack()
                except Exception:  # the error boundary: log; the message is redelivered
                    logger.exception("handling failed subject=%s; will be redelivered", msg.subject)
                    with contextlib.suppress(Exception):
                        await msg.nak(delay=1.0)

    async def _on_submission(self, msg: Msg) -> None:
        t0 = time.perf_counter()
        try:
            sub = task_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._reject(msg, f"invalid task: {exc}")
            return
        task_id = task_id_for(sub.task_id, sub.message_id)
        sub = msgspec.structs.replace(sub, task_id=task_id, created_at=sub.created_at or now())
        try:
            sub = await self._attach_inline_files(sub)
            plan, note = await self._plan(sub)
        except (PlanError, ValueError) as exc:
            await self._reject(msg, str(exc), task_id=task_id, sub=sub)
            return
        decompose_s = time.perf_counter() - t0
        st = self.engine.start(task_id, sub, plan, decompose_s, now(), note=note)
        try:
            await self.kv.create(task_id, self.engine.encode(st, now()))
        except KeyWrongLastSequenceError:
            logger.info(
                "duplicate submission task=%s message_id=%s: already running", task_id, sub.message_id
            )
            return
        self._open.add(task_id)
        await self._flush(task_id, st.outbox)
        logger.info("task accepted task=%s type=%s steps=%d", task_id, sub.task_type, len(plan.steps))

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
        self, msg: Msg, reason: str, *, task_id: str | None = None, sub: TaskSubmission | None = None
    ) -> None:
        await self.bus.dead_letter("orchestrator", msg.subject, msg.data, reason, dict(msg.headers or {}))
        if task_id is None:
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                loose = _loose_decoder.decode(msg.data)
                if isinstance(loose.task_id, str) and loose.task_id:
                    task_id = task_id_for(loose.task_id, "")
                elif isinstance(loose.message_id, str) and loose.message_id:
                    task_id = task_id_for("", loose.message_id)
        if task_id is None:
            logger.warning("rejected a task with no usable id: %s", reason)
            return
        s = self.bus.subjects
        at = now()
        event = TaskEvent(
            task_id=task_id,
            kind="rejected",
            text=f"[Orchestrator] Task rejected: {reason}",
            at=at,
            seq=1,
            detail=reason,
        )
        await self.bus.publish(s.events(task_id, "rejected"), event, msg_id=f"{task_id}.rejected")
        result = FinalResult(
            task_id=task_id,
            status="rejected",
            approved=False,
            reason=reason,
            description=sub.task.description if sub else "",
            task_type=sub.task_type if sub else "",
            started_at=at,
            finished_at=at,
        )
        await self.bus.publish(s.result(task_id), result, msg_id=f"{task_id}.result")
        logger.warning("task rejected task=%s reason=%s", task_id, reason)

    # --- agent messages -------------------------------------------------------------------------------
    async def _on_step_message(self, msg: Msg) -> None:
        try:
            step_msg = step_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self.bus.dead_letter("orchestrator", msg.subject, msg.data, f"invalid step message: {exc}")
            return
        step_msg = await offload_step_output(self.bus, step_msg)  # engine: large outputs by reference
        found = await self._mutate(
            step_msg.task_id, lambda st, t: self.engine.on_step_message(st, step_msg, t)
        )
        if found is None:
            await self.bus.dead_letter(
                "orchestrator", msg.subject, msg.data, f"unknown task {step_msg.task_id!r}"
            )

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
        await self._mutate(
            item.task_id,
            lambda st, t: self.engine.on_undeliverable(
                st, item.step_id, item.attempt, advisory.deliveries, t, self.health
            ),
        )
        with contextlib.suppress(Exception):
            await self.bus.js.delete_msg(self.bus.subjects.stream_work, advisory.stream_seq)

    # --- deadlines and health --------------------------------------------------------------------------
    async def _on_heartbeat(self, msg: Msg) -> None:
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            hb = heartbeat_decoder.decode(msg.data)
            self._heartbeats[hb.instance_id] = hb
            self._hb_seen[hb.instance_id] = time.monotonic()

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
            try:
                if n % refresh_every == 0:
                    await self.resume()  # workflows another instance accepted
                for task_id in list(self._open):
                    await self._mutate(task_id, lambda st, t: self.engine.on_tick(st, t, self.health))
            except Exception:
                logger.exception("tick failed")

    def _pulse(self) -> Pulse:
        return Pulse("busy" if self._open else "idle", len(self._open), sorted(self._open)[:20])

    # --- cancel ------------------------------------------------------------------------------------------
    async def _on_cancel(self, req: Request) -> None:
        try:
            cancel = cancel_decoder.decode(req.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await req.respond_error("400", f"invalid cancel request: {exc}")
            return
        st = await self._mutate(cancel.task_id, lambda s, t: self.engine.cancel(s, t, cancel.reason))
        if st is None:
            reply = CancelReply(task_id=cancel.task_id, accepted=False, reason="unknown task id")
        elif st.status == "cancelled":
            reply = CancelReply(task_id=cancel.task_id, accepted=True, reason=cancel.reason)
        else:
            reply = CancelReply(task_id=cancel.task_id, accepted=False, reason=f"task already {st.status}")
        await req.respond(encode(reply))
