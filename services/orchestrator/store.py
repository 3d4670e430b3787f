"""The workflow store: each open task's cached state, one revision-checked write per transition.

``WorkflowStore.mutate`` is the one way the orchestrator changes a workflow,
under that task's lock: take the cached state and revision (KV is read only
for a task not cached here, or after a revision conflict; a watch on the
bucket refreshes copies another instance moved on), apply the held started
notices and one engine transition, write it back once if it changed
(revision-checked), then publish the outbox with dedup ids, all at once,
awaiting the acks together. The outbox is cleared lazily: a published entry
leaves the state with the task's next write (or a final write when the task
ends), and at the latest a quarter of the dedup window after it was written (a
deadline tick writes the clear when a step runs long); a crash in between
re-publishes it, which the stream's dedup window absorbs. A periodic resume
leaves a young outbox to the instance that wrote it.

A ``StepStarted`` has no write of its own: it is held, unacked, and applied
with the task's next write (normally its result's), or written alone after
``HELD_WRITE_DELAY``; it is acked only once stored, so a crash redelivers it
and event ``seq`` numbers stay contiguous across instances. Why a stale
cached copy is safe: docs/orchestrator.md "Durability and the hot path".
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from services.orchestrator import provenance
from services.orchestrator.state import Outgoing, WorkflowState, state_decoder
from services.orchestrator.workflow import Engine, run_key
from shared.bus import downloads
from shared.bus.consumer import DECODE_ERRORS, Delivery, KeyedLocks
from shared.bus.core import Bus
from shared.contract.errors import CadreError
from shared.contract.protocol import StepStarted, now, result_decoder

__all__ = ["Cached", "Held", "WorkflowStore", "HELD_WRITE_DELAY"]

logger = logging.getLogger(__name__)

_MUTATE_RETRIES = 50
# Bound on waiting for the store's acks of one outbox flush.
_PUBLISH_BOUND = 10.0
HELD_WRITE_DELAY = 0.25
"""A held StepStarted is written with its task's next write, or after this long (a step still running)."""


@dataclass
class Cached:
    """One open task as this instance last wrote or read it."""

    state: WorkflowState
    revision: int
    sent: set[str] = field(default_factory=set)  # outbox ids published, still in the KV copy
    writing: bool = False  # an update is in flight: the watch leaves this copy alone


@dataclass
class Held:
    """A ``StepStarted`` taken off the stream but not yet written: applied with the task's next
    write (``mutate``), acked only once that write is stored, so a crash redelivers it."""

    guard: provenance.Guard
    delivery: Delivery


@dataclass
class WorkflowStore:
    """The open workflows of one orchestrator instance, as KV holds them (see the module doc)."""

    bus: Bus
    kv: KeyValue
    engine: Engine
    spawn: Callable[[Coroutine[Any, Any, Any], str], Any]  # ServiceShell.spawn: background tasks
    dedup_window: float = 120.0  # the streams' dedup window (``BusSettings.dedup_window``)
    cache: dict[str, Cached] = field(default_factory=dict)
    locks: KeyedLocks = field(default_factory=KeyedLocks)
    # task -> run key -> started notice held for the task's next write; tasks with a write scheduled
    held: dict[str, dict[str, Held]] = field(default_factory=dict)
    held_timers: set[str] = field(default_factory=set)
    # KV reads / writes / revision conflicts and how held notices were written ($SRV.STATS "workflow_io")
    io: Counter[str] = field(default_factory=Counter)
    open: set[str] = field(default_factory=set)  # running tasks whose deadlines this instance ticks
    # finished and fully flushed, with when they ended: periodic resumes skip them and
    # delete their keys once ``workflow_retention`` has passed
    settled: dict[str, float] = field(default_factory=dict)

    async def close(self) -> None:
        """Hand back the held notices (redelivered at once, not after AckWait) and stop the watch."""
        held, self.held = self.held, {}
        for runs in held.values():
            for h in runs.values():
                with contextlib.suppress(Exception):
                    await h.delivery.msg.nak()
        watch = getattr(self, "_watch", None)
        if watch is not None:
            with contextlib.suppress(Exception):
                await watch.unsubscribe()

    async def watch(self) -> None:
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
            cached = self.cache.get(task_id)
            if cached is None:
                return
            revision = msg.metadata.sequence.stream
            if cached.writing or revision <= cached.revision:
                return  # this instance's own write (in flight or done), or one it has already read
            self.io["watched"] += 1
            if (msg.headers or {}).get("KV-Operation") or not msg.data:  # deleted or purged
                self.cache.pop(task_id, None)
                return
            st = state_decoder.decode(msg.data)
            if st.status != "running":
                # ended by another instance: nothing left to decide here. Its outbox is that
                # instance's to publish (a crash before it did is repaired by any resume)
                self.cache.pop(task_id, None)
                self.open.discard(task_id)
                return
            self.cache[task_id] = Cached(st, revision)
        except Exception as exc:  # noqa: BLE001 - a core callback: nothing may escape; the copy is dropped
            self.cache.pop(getattr(msg, "subject", "")[len(self._kv_prefix) :], None)
            logger.warning("workflow watch could not use a write err=%s", exc)

    async def refresh(self, task_id: str) -> None:
        """Drop the cached copy of a task when KV holds another revision (another instance wrote)."""
        cached = self.cache.get(task_id)
        if cached is None:
            return
        entry = await self.kv.get(task_id)
        self.io["reads"] += 1
        if entry.revision is not None and entry.revision != cached.revision:
            self.cache.pop(task_id, None)

    def encode(self, st: WorkflowState) -> bytes:
        """The bytes written to KV for ``st`` (the one place a state is encoded for storage).

        The engine's size guard: a state that would outgrow the message limit is compacted,
        or its task ends failed with that reason (``Engine.encode``).
        """
        return self.engine.encode(st, now())

    async def load(self, task_id: str) -> Cached | None:
        """The task's state and revision as KV holds them, or None for an unknown task."""
        try:
            self.io["reads"] += 1
            entry = await self.kv.get(task_id)
        except KeyNotFoundError:
            return None
        assert entry.value is not None and entry.revision is not None
        return Cached(state_decoder.decode(entry.value), entry.revision)

    async def mutate(
        self,
        task_id: str,
        transition: Callable[[WorkflowState, float], bool],
        *,
        fresh: bool = False,
        hold_young: float = 0.0,
    ) -> WorkflowState | None:
        """Apply the held started notices and one transition; write once if they changed the state.

        The cached copy is used when there is one (``fresh`` reads KV first). That is safe
        with several instances: a write is revision-checked, so a stale copy cannot commit
        (a conflict re-reads and decides again), and every "nothing to do" the engine
        decides rests on a fact that only ever becomes true (a run listed, a result
        applied, a key in ``late_results``, a task ended), which a stale copy cannot
        show before KV does. The one decision that is not of that kind, deferring a
        result whose starter is not listed, re-reads first (the service's ``_on_step_message``).

        ``hold_young`` (a resume): an outbox written less than this long ago is left to the
        instance that wrote it, which publishes it at once; only an older one (its writer
        crashed) is published here, so two instances do not both send every record.
        """
        async with self.locks.hold(task_id):
            held = self.held.pop(task_id, {})  # applied with this write, acked after it
            try:
                st = await self._mutate_locked(task_id, transition, list(held.values()), fresh, hold_young)
            except BaseException:
                for key, h in held.items():  # the next write (a timer, a tick, a message) applies them
                    self.held.setdefault(task_id, {}).setdefault(key, h)
                raise
        if held:
            self.io["started_applied"] += len(held)
            await self._settle_held(task_id, list(held.values()), found=st is not None)
        return st

    async def _mutate_locked(
        self,
        task_id: str,
        transition: Callable[[WorkflowState, float], bool],
        held: list[Held],
        fresh: bool,
        hold_young: float,
    ) -> WorkflowState | None:
        """``mutate`` under the task's lock: None when KV has no such task."""
        for _ in range(_MUTATE_RETRIES):
            cached = self.cache.get(task_id)
            if cached is None or fresh:
                loaded = await self.load(task_id)
                if loaded is None:
                    self.cache.pop(task_id, None)
                    return None
                if cached is not None and cached.revision == loaded.revision:
                    loaded.sent = cached.sent  # what this instance already published
                cached = loaded
                fresh = False
            st = cached.state
            # entries published already leave the state with this write (lazy clear) — only
            # if there is a write: until then KV still holds them, and so must the copy here,
            # with ``sent`` remembering they went out
            stored = st.outbox
            st.outbox = [o for o in stored if o.id not in cached.sent]
            try:
                t = now()
                changed = False
                for h in held:  # the started notices first: they precede the message in the stream
                    changed = h.guard(st, t) or changed
                changed = transition(st, t) or changed
                changed = changed or self._clear_due(cached, stored, t)
                if changed:
                    if st.outbox:
                        st.outbox_at = t
                    self.io["writes"] += 1
                    cached.writing = True
                    try:
                        cached.revision = await self.kv.update(task_id, self.encode(st), last=cached.revision)
                    finally:
                        cached.writing = False
                    cached.sent.clear()
                else:
                    st.outbox = stored
                    pending = [o for o in stored if o.id not in cached.sent]
                    if pending and t - st.outbox_at < hold_young:
                        return st
            except KeyWrongLastSequenceError:
                self.io["conflicts"] += 1
                self.cache.pop(task_id, None)
                continue  # another instance moved it on: re-read and decide again
            except BaseException:
                self.cache.pop(task_id, None)  # half-applied in memory: never reuse it
                raise
            self.cache[task_id] = cached
            await self.flush(task_id, cached)
            return st
        raise CadreError(f"workflow {task_id}: too many concurrent updates")

    def _clear_due(self, cached: Cached, stored: list[Outgoing], t: float) -> bool:
        """Whether published entries have waited in KV long enough to be cleared by a write of
        their own.

        The stream's dedup window absorbs a re-publish of an entry only while it is younger
        than the window; an entry left in KV longer (a step that runs for minutes) would be
        sent twice by a resume after a crash or by another instance. So the deadline tick
        clears them after a quarter of the window, even when nothing else changes.
        """
        if not cached.sent or len(stored) == len(cached.state.outbox):
            return False
        return t - cached.state.outbox_at >= self.dedup_window / 4

    async def _settle_held(self, task_id: str, held: list[Held], *, found: bool) -> None:
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
                    self.io["started_dead_lettered"] += 1
                await d.msg.ack()
            except Exception as exc:  # redelivered after AckWait: applying it again changes nothing
                self.io["started_settle_errors"] += 1
                logger.warning("settling a started notice failed task=%s err=%s", task_id, exc)

    def hold(self, notice: StepStarted, guard: provenance.Guard, delivery: Delivery) -> None:
        """Keep a started notice for the task's next write; schedule one should no message come first."""
        delivery.take()  # acked by ``_settle_held`` once a write has stored it
        task_id = notice.task_id
        runs = self.held.setdefault(task_id, {})
        earlier = runs.get(run_key(notice))
        if earlier is not None:  # a redelivery of a notice still held: keep one, the old copy needs no ack
            logger.debug("started notice redelivered while held task=%s", task_id)
        runs[run_key(notice)] = Held(guard, delivery)
        if task_id not in self.held_timers:
            self.held_timers.add(task_id)
            self.spawn(self._write_held(task_id), f"held-{task_id}")

    async def _write_held(self, task_id: str) -> None:
        """Write the held notices of a task whose step is still running (its result did not come first)."""
        try:
            await asyncio.sleep(HELD_WRITE_DELAY)  # a timer, not a synchronisation: the result usually wins
        finally:
            self.held_timers.discard(task_id)
        if task_id not in self.held:
            return
        try:
            self.io["started_written_alone"] += len(self.held[task_id])
            await self.mutate(task_id, lambda st, t: False)
        except Exception as exc:  # kept held: the tick loop writes them on its next pass
            logger.warning("writing held started notices failed task=%s err=%s", task_id, exc)

    async def flush(self, task_id: str, cached: Cached) -> None:
        """Publish the unsent outbox at once and await the acks together; settle a finished task."""
        st = cached.state
        pending = [o for o in st.outbox if o.id not in cached.sent]
        if pending:
            await self._offer_downloads(st, pending)
            await self._publish_all(pending)
            cached.sent.update(o.id for o in pending)
        if st.status == "running":
            self.open.add(task_id)
            return
        self.open.discard(task_id)
        if st.outbox:
            # the one extra write of a task: a finished state keeps no outbox to re-publish later
            st.outbox = []
            cached.writing = True  # the copy is dropped after this write: the watch need not read it
            try:
                self.io["writes"] += 1
                cached.revision = await self.kv.update(task_id, self.encode(st), last=cached.revision)
            except KeyWrongLastSequenceError:
                self.io["conflicts"] += 1  # another instance wrote it; its resume clears what is left
            except Exception as exc:  # the next resume re-publishes (deduplicated) and tries again
                logger.warning("clearing the outbox of task=%s failed err=%s", task_id, exc)
                self.cache.pop(task_id, None)
                return
        self.cache.pop(task_id, None)
        self.settled[task_id] = st.finished_at

    async def _offer_downloads(self, st: WorkflowState, pending: list[Outgoing]) -> None:
        """Before a final result goes out, offer its artifacts to the task's client (downloads stream)."""
        subject = self.bus.subjects.result(st.client, st.task_id)
        for out in pending:
            if out.subject == subject:
                with contextlib.suppress(*DECODE_ERRORS):
                    await downloads.offer_result(self.bus, st.client, result_decoder.decode(out.data))

    async def _publish_all(self, outbox: list[Outgoing]) -> None:
        """Send every record in order without waiting in between; then wait for all the acks."""
        acks = []
        for out in outbox:
            if out.stream:
                acks.append(await self.bus.publish_async(out.subject, out.data, msg_id=out.id))
            else:
                # no ack awaited; the id still deduplicates a re-flush where a stream stores it
                await self.bus.nc.publish(out.subject, out.data, headers={"Nats-Msg-Id": out.id})
        if acks:
            done = await asyncio.wait_for(asyncio.gather(*acks, return_exceptions=True), _PUBLISH_BOUND)
            errors = [d for d in done if isinstance(d, BaseException)]
            if errors:
                raise errors[0]
