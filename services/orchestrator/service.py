"""The orchestrator service: intake, step results, deadlines, cancel — all state in KV.

Every change to a workflow goes through ``_mutate``, under that task's lock:
take the cached state and revision (KV is read only for a task not cached here,
or after a revision conflict; a watch on the bucket refreshes copies another
instance moved on), apply the held started notices and one engine transition,
write it back once if it changed (revision-checked), then publish the outbox
with dedup ids, all at once, awaiting the acks together. The outbox is cleared
lazily: a published entry leaves the state with the task's next write (or a
final write when the task ends); a crash in between re-publishes it, which the
stream's dedup window absorbs.

A ``StepStarted`` has no write of its own: it is held, unacked, and applied
with the task's next write (normally its result's), or written alone after
``_HELD_WRITE_DELAY``; acked only once stored, so a crash redelivers it and
event ``seq`` numbers stay contiguous across instances. Why a stale cached
copy is safe: docs/orchestrator.md "Durability and the hot path". Different
tasks run concurrently; messages of one task are applied in stream order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.micro.request import Request

from services.orchestrator import intake, provenance
from services.orchestrator.plan import plan_from_template, templates, validate_plan
from services.orchestrator.policy import ConflictPolicy
from services.orchestrator.state import Outgoing, WorkflowState, state_decoder
from services.orchestrator.workflow import Engine, EngineConfig, run_key
from shared.bus.consumer import DECODE_ERRORS, Delivery, KeyedLocks, Rejected, SupervisedConsumer
from shared.bus.core import Bus
from shared.bus.outputs import offload_step_output
from shared.bus.service import Lifecycle, Pulse, ServiceShell
from shared.bus.settings import Settings
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

_MUTATE_RETRIES = 50
# How many step messages / submissions are handled at once (different tasks run concurrently).
_RESULTS_CONCURRENCY = 64
_INTAKE_CONCURRENCY = 8
# Bound on waiting for the store's acks of one outbox flush.
_PUBLISH_BOUND = 10.0
# A held StepStarted is written with its task's next write, or after this long (a step still running).
_HELD_WRITE_DELAY = 0.25
# A result from an instance with no started run of its attempt waits this many deliveries for the
# notice (another orchestrator may hold it) before it is refused.
_DEFER_DELIVERIES = 4


class _MaxDeliverAdvisory(msgspec.Struct):
    """``io.nats.jetstream.advisory.v1.max_deliver`` (the fields we use)."""

    stream_seq: int
    deliveries: int = 0


_max_deliver_decoder = msgspec.json.Decoder(_MaxDeliverAdvisory)


@dataclass
class _Cached:
    """One open task as this instance last wrote or read it."""

    state: WorkflowState
    revision: int
    sent: set[str] = field(default_factory=set)  # outbox ids published, still in the KV copy
    writing: bool = False  # an update is in flight: the watch leaves this copy alone


@dataclass
class _Held:
    """A ``StepStarted`` taken off the stream but not yet written: applied with the task's next
    write (``_mutate``), acked only once that write is stored, so a crash redelivers it."""

    guard: provenance.Guard
    delivery: Delivery


def task_id_for(sub_task_id: str, message_id: str) -> str:
    """The user's task id, or one derived from the message id (so a re-publish maps to the same task).

    Both are validated when the submission is decoded: never rewritten here.
    """
    return sub_task_id or f"task_{message_id}"


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
    _cache: dict[str, _Cached] = field(default_factory=dict, init=False)
    _locks: KeyedLocks = field(default_factory=KeyedLocks, init=False)
    # task -> run key -> started notice held for the task's next write; tasks with a write scheduled
    _held: dict[str, dict[str, _Held]] = field(default_factory=dict, init=False)
    _held_timers: set[str] = field(default_factory=set, init=False)
    # KV reads / writes / revision conflicts and how held notices were written ($SRV.STATS "workflow_io")
    _io: Counter[str] = field(default_factory=Counter, init=False)
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
        self._limits = intake.Limits.from_settings(s)

    # --- lifecycle ------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.bus.subjects
        templates()  # fail fast on a broken template file
        self.kv = await self.bus.workflows()
        await self._watch_states()
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
            {"cancel": (s.task_cancel, self._on_cancel)},
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
            "orchestrator started instance=%s open_workflows=%d", self.settings.instance_id, len(self._open)
        )

    @property
    def fatal(self) -> asyncio.Event:
        """Set when a consumer or tick loop keeps dying: the process should exit non-zero."""
        return self._shell.fatal

    def _stats(self) -> dict[str, Any]:
        return {
            "consumers": {c.name: c.stats.as_dict() for c in (self.intake, self.results)},
            "loop_restarts": sum(self._shell.restarts.values()),
            "open_tasks": len(self._open),
            "cached_tasks": len(self._cache),
            "held_started": sum(len(h) for h in self._held.values()),
            "workflow_io": dict(self._io),
        }

    async def stop(self) -> None:
        held, self._held = self._held, {}
        for runs in held.values():  # redelivered at once to whoever runs on, not after AckWait
            for h in runs.values():
                with contextlib.suppress(Exception):
                    await h.delivery.msg.nak()
        watch = getattr(self, "_watch", None)
        if watch is not None:
            with contextlib.suppress(Exception):
                await watch.unsubscribe()
        if await self._shell.close():
            logger.info("orchestrator stopped")

    async def _watch_states(self) -> None:
        """Keep the cached copies fresh with every other instance's writes.

        An ordered push consumer on the workflow bucket, new writes only. With two
        orchestrators a task's messages go to either, so each instance's copy would be
        behind half the time and its write would lose the revision race (a failed
        write, a read, a second write). Only tasks already cached here are updated;
        a watch that lags or stops costs nothing but those conflicts: writes stay
        revision-checked.
        """
        bucket = self.bus.subjects.kv_workflows
        self._kv_prefix = f"$KV.{bucket}."
        try:
            self._watch = await self.bus.js.subscribe(
                f"{self._kv_prefix}>",
                stream=f"KV_{bucket}",
                cb=self._on_state_write,
                ordered_consumer=True,
                deliver_policy=DeliverPolicy.NEW,
            )
        except Exception as exc:  # noqa: BLE001 - an optimisation: without it, conflicts re-read
            logger.warning("workflow watch not started (cached copies refresh on conflict) err=%s", exc)

    async def _on_state_write(self, msg: Msg) -> None:
        """A write to the bucket: replace an older cached copy of that task (a core callback)."""
        try:
            task_id = msg.subject[len(self._kv_prefix) :]
            cached = self._cache.get(task_id)
            if cached is None:
                return
            revision = msg.metadata.sequence.stream
            if cached.writing or revision <= cached.revision:
                return  # this instance's own write (in flight or done), or one it has already read
            self._io["watched"] += 1
            if (msg.headers or {}).get("KV-Operation") or not msg.data:  # deleted or purged
                self._cache.pop(task_id, None)
                return
            st = state_decoder.decode(msg.data)
            if st.status != "running":
                # ended by another instance: nothing left to decide here. Its outbox is that
                # instance's to publish (a crash before it did is repaired by any resume)
                self._cache.pop(task_id, None)
                self._open.discard(task_id)
                return
            self._cache[task_id] = _Cached(st, revision)
        except Exception as exc:  # noqa: BLE001 - a core callback: nothing may escape; the copy is dropped
            self._cache.pop(getattr(msg, "subject", "")[len(self._kv_prefix) :], None)
            logger.warning("workflow watch could not use a write err=%s", exc)

    async def resume(self) -> None:
        """Pick up every open workflow in KV: flush what a crash left unpublished.

        A task cached here is re-read only when KV holds a newer revision (another
        instance moved it on).
        """
        try:
            keys = await self.kv.keys()
        except Exception:  # nats raises NoKeysError on an empty bucket
            keys = []
        for key in keys:
            if key in self._settled:
                continue
            try:
                await self._refresh(key)
                await self._mutate(key, lambda st, t: False, fresh=False)
            except Exception as exc:  # one bad workflow must not stop the others resuming
                logger.warning("resume failed task=%s err=%s", key, exc)
        logger.debug("resumed workflows=%d open=%d", len(keys), len(self._open))
        await self._purge_expired()

    async def _refresh(self, task_id: str) -> None:
        cached = self._cache.get(task_id)
        if cached is None:
            return
        entry = await self.kv.get(task_id)
        self._io["reads"] += 1
        if entry.revision is not None and entry.revision != cached.revision:
            self._cache.pop(task_id, None)

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
    def _encode(self, st: WorkflowState) -> bytes:
        """The bytes written to KV for ``st`` (the one place a state is encoded for storage).

        The engine's size guard: a state that would outgrow the message limit is compacted,
        or its task ends failed with that reason (``Engine.encode``).
        """
        return self.engine.encode(st, now())

    async def _load(self, task_id: str) -> _Cached | None:
        try:
            self._io["reads"] += 1
            entry = await self.kv.get(task_id)
        except KeyNotFoundError:
            return None
        assert entry.value is not None and entry.revision is not None
        return _Cached(state_decoder.decode(entry.value), entry.revision)

    async def _mutate(
        self, task_id: str, transition: Callable[[WorkflowState, float], bool], *, fresh: bool = False
    ) -> WorkflowState | None:
        """Apply the held started notices and one transition; write once if they changed the state.

        The cached copy is used when there is one (``fresh`` reads KV first). That is safe
        with several instances: a write is revision-checked, so a stale copy cannot commit
        (a conflict re-reads and decides again), and every "nothing to do" the engine
        decides rests on a fact that only ever becomes true (a run listed, a result
        applied, a key in ``late_results``, a task ended), which a stale copy cannot
        show before KV does. The one decision that is not of that kind, deferring a
        result whose starter is not listed, re-reads first (``_on_step_message``).
        """
        async with self._locks.hold(task_id):
            held = self._held.pop(task_id, {})  # applied with this write, acked after it
            try:
                st = await self._mutate_locked(task_id, transition, list(held.values()), fresh)
            except BaseException:
                for key, h in held.items():  # the next write (a timer, a tick, a message) applies them
                    self._held.setdefault(task_id, {}).setdefault(key, h)
                raise
        if held:
            self._io["started_applied"] += len(held)
            await self._settle_held(task_id, list(held.values()), found=st is not None)
        return st

    async def _mutate_locked(
        self,
        task_id: str,
        transition: Callable[[WorkflowState, float], bool],
        held: list[_Held],
        fresh: bool,
    ) -> WorkflowState | None:
        """``_mutate`` under the task's lock: None when KV has no such task."""
        for _ in range(_MUTATE_RETRIES):
            cached = self._cache.get(task_id)
            if cached is None or fresh:
                loaded = await self._load(task_id)
                if loaded is None:
                    self._cache.pop(task_id, None)
                    return None
                if cached is not None and cached.revision == loaded.revision:
                    loaded.sent = cached.sent  # what this instance already published
                cached = loaded
                fresh = False
            st = cached.state
            # entries published already leave the state with this write (lazy clear)
            st.outbox = [o for o in st.outbox if o.id not in cached.sent]
            cached.sent.clear()
            try:
                t = now()
                changed = False
                for h in held:  # the started notices first: they precede the message in the stream
                    changed = h.guard(st, t) or changed
                changed = transition(st, t) or changed
                if changed:
                    self._io["writes"] += 1
                    cached.writing = True
                    try:
                        cached.revision = await self.kv.update(
                            task_id, self._encode(st), last=cached.revision
                        )
                    finally:
                        cached.writing = False
            except KeyWrongLastSequenceError:
                self._io["conflicts"] += 1
                self._cache.pop(task_id, None)
                continue  # another instance moved it on: re-read and decide again
            except BaseException:
                self._cache.pop(task_id, None)  # half-applied in memory: never reuse it
                raise
            self._cache[task_id] = cached
            await self._flush(task_id, cached)
            return st
        raise CadreError(f"workflow {task_id}: too many concurrent updates")

    async def _settle_held(self, task_id: str, held: list[_Held], *, found: bool) -> None:
        """Ack the started notices a write just stored; dead-letter refused ones (all, for an unknown task)."""
        for h in held:
            reason = f"refused: {h.guard.refused}" if h.guard.refused else None
            if not found:
                reason = f"unknown task {task_id!r}"
            d = h.delivery
            try:
                if reason is not None:
                    await self.bus.dead_letter(
                        "orchestrator", d.subject, d.msg.data, f"unroutable: {reason}", d.headers
                    )
                    self.results.stats.dead_lettered += 1
                await d.msg.ack()
            except Exception as exc:  # redelivered after AckWait: applying it again changes nothing
                self.results.stats.errors += 1
                logger.warning("settling a started notice failed task=%s err=%s", task_id, exc)

    def _hold(self, notice: StepStarted, guard: provenance.Guard, delivery: Delivery) -> None:
        """Keep a started notice for the task's next write; schedule one should no message come first."""
        delivery.take()  # acked by ``_settle_held`` once a write has stored it
        task_id = notice.task_id
        runs = self._held.setdefault(task_id, {})
        earlier = runs.get(run_key(notice))
        if earlier is not None:  # a redelivery of a notice still held: keep one, the old copy needs no ack
            logger.debug("started notice redelivered while held task=%s", task_id)
        runs[run_key(notice)] = _Held(guard, delivery)
        if task_id not in self._held_timers:
            self._held_timers.add(task_id)
            self._shell.spawn(self._write_held(task_id), f"held-{task_id}")

    async def _write_held(self, task_id: str) -> None:
        """Write the held notices of a task whose step is still running (its result did not come first)."""
        try:
            await asyncio.sleep(_HELD_WRITE_DELAY)  # a timer, not a synchronisation: the result usually wins
        finally:
            self._held_timers.discard(task_id)
        if task_id not in self._held:
            return
        try:
            self._io["started_written_alone"] += len(self._held[task_id])
            await self._mutate(task_id, lambda st, t: False)
        except Exception as exc:  # kept held: the tick loop writes them on its next pass
            logger.warning("writing held started notices failed task=%s err=%s", task_id, exc)

    async def _flush(self, task_id: str, cached: _Cached) -> None:
        """Publish the unsent outbox at once and await the acks together; settle a finished task."""
        st = cached.state
        pending = [o for o in st.outbox if o.id not in cached.sent]
        if pending:
            await self._publish_all(pending)
            cached.sent.update(o.id for o in pending)
        if st.status == "running":
            self._open.add(task_id)
            return
        self._open.discard(task_id)
        if st.outbox:
            # the one extra write of a task: a finished state keeps no outbox to re-publish later
            st.outbox = []
            cached.writing = True  # the copy is dropped after this write: the watch need not read it
            try:
                self._io["writes"] += 1
                cached.revision = await self.kv.update(task_id, self._encode(st), last=cached.revision)
            except KeyWrongLastSequenceError:
                self._io["conflicts"] += 1  # another instance wrote it; its resume clears what is left
            except Exception as exc:  # the next resume re-publishes (deduplicated) and tries again
                logger.warning("clearing the outbox of task=%s failed err=%s", task_id, exc)
                self._cache.pop(task_id, None)
                return
        self._cache.pop(task_id, None)
        self._settled[task_id] = st.finished_at

    async def _publish_all(self, outbox: list[Outgoing]) -> None:
        """Send every record in order without waiting in between; then wait for all the acks."""
        acks = []
        for out in outbox:
            if out.stream:
                acks.append(
                    await self.bus.js.publish_async(out.subject, out.data, headers={"Nats-Msg-Id": out.id})
                )
            else:
                await self.bus.nc.publish(out.subject, out.data)
        if acks:
            done = await asyncio.wait_for(asyncio.gather(*acks, return_exceptions=True), _PUBLISH_BOUND)
            errors = [d for d in done if isinstance(d, BaseException)]
            if errors:
                raise errors[0]

    # --- intake ----------------------------------------------------------------------------------------
    async def _on_submission(self, sub: TaskSubmission, delivery: Delivery) -> None:
        t0 = time.perf_counter()
        msg = delivery.msg
        task_id = task_id_for(sub.task_id, sub.message_id)
        sub = msgspec.structs.replace(sub, task_id=task_id, created_at=sub.created_at or now())
        async with self._locks.hold(task_id):
            try:
                intake.check_submission(sub, self._limits)
                if not await intake.check_task_id(self.kv, sub):
                    logger.info("duplicate submission task=%s message_id=%s", task_id, sub.message_id)
                    return
                sub = await intake.check_workspace(self.bus, sub, self._limits)
                sub = await self._attach_inline_files(sub)
                plan, note = await self._plan(sub)
            except (PlanError, ValueError) as exc:
                await self._reject(msg, str(exc), task_id=task_id, sub=sub)
                return
            decompose_s = time.perf_counter() - t0
            st = self.engine.start(task_id, sub, plan, decompose_s, now(), note=note)
            try:
                self._io["writes"] += 1
                revision = await self.kv.create(task_id, self._encode(st))
            except KeyWrongLastSequenceError:
                try:  # accepted meanwhile (another instance): the same submission, or another's id
                    await intake.check_task_id(self.kv, sub)
                except intake.Refused as exc:
                    await self._reject(msg, str(exc), task_id=task_id, sub=sub)
                return
            cached = _Cached(st, revision)
            self._cache[task_id] = cached
            await self._flush(task_id, cached)
        logger.info("task accepted task=%s type=%s steps=%d", task_id, sub.task_type, len(plan.steps))

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
            may_defer=delivery.num_delivered < _DEFER_DELIVERIES,
        )
        if isinstance(step_msg, StepStarted):
            # no write of its own: applied with the task's next write (usually its result's),
            # acked after it; see docs/orchestrator.md "Durability and the hot path"
            self._hold(step_msg, guard, delivery)
            return
        found = await self._mutate(step_msg.task_id, guard)
        if guard.deferred is not None:  # a decision not to apply: only ever taken on KV's copy
            found = await self._mutate(step_msg.task_id, guard, fresh=True)
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
            await self._mutate(
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
                    await self.resume()  # workflows another instance accepted or moved on
                except Exception:
                    logger.exception("resume failed")
            for task_id in list(self._open | set(self._held)):  # held notices: a write that failed
                try:
                    await self._mutate(
                        task_id, lambda st, t: self.engine.on_tick(st, t, self.health), fresh=False
                    )
                except Exception:  # one task's failure must not stop the others' deadlines
                    logger.exception("tick failed task=%s", task_id)

    def _pulse(self) -> Pulse:
        pulling = self.intake.stats.pulling and self.results.stats.pulling
        return Pulse(
            "busy" if self._open else "idle", len(self._open), sorted(self._open)[:20], pulling=pulling
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
            reply = await self._cancel(cancel.task_id, cancel.reason)
            await req.respond(encode(reply))
        except Exception:  # the boundary: log; the requester gets what we could send
            logger.exception("cancel request failed")

    async def _cancel(self, task_id: str, reason: str) -> CancelReply:
        try:
            token(task_id)
        except InvalidSubjectToken:
            why = "an empty task id" if not task_id else f"{task_id!r} is not a task id"
            return CancelReply(task_id=task_id, accepted=False, reason=f"cancel refused: {why}")
        try:
            st = await self._mutate(task_id, lambda s, t: self.engine.cancel(s, t, reason))
        except Exception as exc:
            logger.exception("cancel failed task=%s", task_id)
            return CancelReply(
                task_id=task_id, accepted=False, reason=f"cancel failed: {type(exc).__name__}: {exc}"
            )
        if st is None:
            return CancelReply(task_id=task_id, accepted=False, reason="unknown task id")
        if st.status == "cancelled":
            return CancelReply(task_id=task_id, accepted=True, reason=reason)
        return CancelReply(task_id=task_id, accepted=False, reason=f"task already {st.status}")
