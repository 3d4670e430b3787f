"""The agent runtime shared by researcher, developer and reviewer.

One ``AgentService`` per process: it pulls its role's work (high priority
first), tells the orchestrator it started, runs the brain while sending
in-progress acks, publishes the step result and acks only once the result is
stored. It heartbeats, publishes metric events, honours cancel requests,
exposes itself through nats micro and drains on SIGTERM. One error boundary:
a brain exception becomes a failed step result, never a dead consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.errors import MaxPayloadError
from nats.micro.request import Request

from shared.agent.brains import Brain, BrainResult, StepContext, load_brain
from shared.agent.settings import AgentSettings
from shared.bus.consumer import DECODE_ERRORS, Delivery, Puller, Rejected, SupervisedConsumer
from shared.bus.core import Bus
from shared.bus.outputs import offload_output
from shared.bus.service import Lifecycle, Pulse, ServiceShell
from shared.contract.errors import CadreError, InvalidSubjectToken
from shared.contract.monitoring import AgentStatus
from shared.contract.protocol import (
    PRIORITIES,
    AgentRole,
    MetricEvent,
    StepOutcome,
    StepResult,
    StepStarted,
    Timings,
    WorkItem,
    cancel_decoder,
    encode,
    new_id,
    now,
    work_decoder,
)
from shared.contract.subjects import token

__all__ = ["AgentService", "build_agent"]

logger = logging.getLogger(__name__)

# A pull on a priority that just rang waits this long for the message to be stored.
_PULL_WAIT = 0.05
# An idle agent blocks on its doorbell; it also looks every _IDLE_WAIT s for what rings no bell.
_IDLE_WAIT = 1.0
# An item that names this instance in avoid_instances is handed back this many times at most.
_AVOID_HANDBACKS = 3
# After handing an item back, an instance pulls nothing for this long (> _IDLE_WAIT + the nak delay).
_HANDBACK_PAUSE = 1.5
# How many cancelled tasks / steps an agent remembers (work of older ones has long left the queue).
_CANCEL_MEMORY = 1000


class _Envelope(msgspec.Struct):
    """Loose view of a bad work item, to tell its sender what went wrong."""

    task_id: str | None = None
    step_id: str | None = None
    attempt: int | None = None


_envelope_decoder = msgspec.json.Decoder(_Envelope)


@dataclass
class _InFlight:
    item: WorkItem
    msg: Msg
    ctx: StepContext
    task: asyncio.Task[BrainResult]
    started_at: float
    announce: asyncio.Task[None]


def _pending(msg: Msg) -> int | None:
    """How many more messages the consumer held when this one was delivered (None: unknown)."""
    try:
        return msg.metadata.num_pending
    except Exception:  # noqa: BLE001 - not a JetStream delivery: treat as unknown
        return None


def _remember(seen: OrderedDict[Any, None], key: Any) -> None:
    seen[key] = None
    seen.move_to_end(key)
    while len(seen) > _CANCEL_MEMORY:
        seen.popitem(last=False)


@dataclass
class AgentService(Lifecycle):
    """Consumes one role's work queue and runs a brain on each item."""

    bus: Bus
    brain: Brain
    settings: AgentSettings
    role: AgentRole  # the service's own (researcher, developer, reviewer): not a setting
    instance_id: str = field(init=False)
    _shell: ServiceShell = field(init=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _doorbell: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _slot_free: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _inflight: dict[str, _InFlight] = field(default_factory=dict, init=False)
    # priorities that may hold work: rung since the last pull, or left over by one
    _rung: set[str] = field(default_factory=set, init=False)
    # look into every priority on the next pull (work that rings no bell: redeliveries, naks)
    _look: bool = field(default=True, init=False)
    _looked_at: float = field(default=0.0, init=False)
    _pulling: bool = field(default=False, init=False)
    _paused_until: float = field(default=0.0, init=False)
    # recent cancels (bounded, oldest forgotten first): an item of a cancelled task not started yet
    _cancelled_tasks: OrderedDict[str, None] = field(default_factory=OrderedDict, init=False)
    _cancelled_steps: OrderedDict[tuple[str, str, int], None] = field(default_factory=OrderedDict, init=False)
    completed: int = field(default=0, init=False)
    failed: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.instance_id = self.settings.instance_id
        self._shell = ServiceShell(self.bus, self.role, self.instance_id, self.settings.heartbeat_interval)

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.bus.subjects
        self.consumer = SupervisedConsumer(
            bus=self.bus,
            name=f"work-{self.role}",
            service=f"agent-{self.role}",
            decoder=work_decoder.decode,
            handler=self._on_item,
            on_reject=self._tell_sender,
            max_deliver=self.settings.max_deliver,
        )
        self._pullers = {
            p: await Puller(self.bus, s.stream_work, s.work_consumer(self.role, p)).start()
            for p in PRIORITIES
        }
        await self._shell.subscribe(s.work_all(self.role), self._ring)
        await self._shell.subscribe(s.cancel_all, self._on_cancel)
        await self._shell.add_micro(
            f"Cadre {self.role} agent",
            {"status": (s.agent_status(self.role, self.instance_id), self._status)},
            stats={"status": self._stats},
        )
        self._shell.supervise(self._pull_loop, "pull-loop")
        self._shell.heartbeat_loop(self._pulse)
        logger.info("agent started role=%s instance=%s", self.role, self.instance_id)

    async def stop(self) -> None:
        """Drain: stop pulling, let in-flight work finish within the bound, hand back the rest."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._doorbell.set()
        self._slot_free.set()
        if self._inflight:
            logger.info(
                "draining in_flight=%d timeout=%.1fs", len(self._inflight), self.settings.drain_timeout
            )
            await self._shell.beat(self._pulse())
            pending = [f.task for f in self._inflight.values()]
            _, still = await asyncio.wait(pending, timeout=self.settings.drain_timeout)
            for task in still:
                task.cancel()
            # the step tasks publish results or hand items back themselves
            waiters = [t for t in self._shell.tasks if t.get_name().startswith("step-")]
            await asyncio.gather(*waiters, return_exceptions=True)
        await self._shell.close()
        for puller in getattr(self, "_pullers", {}).values():
            await puller.close()
        logger.info("agent stopped role=%s instance=%s", self.role, self.instance_id)

    @property
    def fatal(self) -> asyncio.Event:
        """Set when the pull loop keeps dying: the process should exit non-zero."""
        return self._shell.fatal

    # --- pulling -------------------------------------------------------------------
    async def _ring(self, msg: Msg) -> None:
        priority = msg.subject.rsplit(".", 1)[-1]
        if priority in PRIORITIES:
            self._rung.add(priority)
        self._doorbell.set()

    async def _pull_loop(self) -> None:
        """Block on the doorbell; pull only the priorities that rang (or all, once per _IDLE_WAIT).

        A pull costs a round trip, so a finished step does not sweep three empty queues: the
        pulled message says how many more its queue holds, a ring marks its priority, and
        what rings no bell (a redelivery, a nak) is found by the look into every priority
        that an idle agent takes once per _IDLE_WAIT (and a busy one at most that often).
        Each message goes through the consumer's error boundary, so no work item can end
        this loop; if something else does, the shell restarts it (and gives up loudly).
        """
        self._pulling = self.consumer.stats.pulling = True
        try:
            while not self._stopping.is_set():
                if len(self._inflight) >= self.settings.concurrency:
                    await self._wait_slot()
                    continue
                pause = self._paused_until - time.monotonic()
                if pause > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), pause)
                    self._look = True  # work handed back meanwhile rang no bell
                    continue
                if time.monotonic() - self._looked_at >= _IDLE_WAIT:
                    self._look = True
                if not self._rung and not self._look:
                    self._doorbell.clear()  # no await since the check: a ring cannot slip between
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._doorbell.wait(), _IDLE_WAIT)
                    continue
                rung, look = self._rung.copy(), self._look
                self._rung.clear()
                self._look = False
                if look:
                    self._looked_at = time.monotonic()
                msg = await self._next_message(rung, look)
                if msg is not None:
                    await self.consumer.process(msg)
        finally:
            self._pulling = self.consumer.stats.pulling = False

    async def _wait_slot(self) -> None:
        # a ring while busy must not spin the loop: wait for a step to finish instead
        self._slot_free.clear()
        if len(self._inflight) >= self.settings.concurrency and not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._slot_free.wait(), _IDLE_WAIT)

    async def _next_message(self, rung: set[str], look: bool) -> Msg | None:
        """The first message in priority order among the priorities that rang (all, with ``look``).

        A rung priority is pulled with a short wait: the ring (a copy of the publish) may
        overtake the stream's store of the message it announces, and a waiting pull is
        answered the moment it is stored (one round trip either way). A priority without
        a ring is pulled without waiting. Rung priorities not reached, and the pulled one
        when its queue holds more, stay marked for the next pull.
        """
        for i, priority in enumerate(PRIORITIES):
            if self._stopping.is_set():
                self._rung.update(rung)
                return None
            if priority not in rung and not look:
                continue
            msg = await self._pull(priority, _PULL_WAIT if priority in rung else None)
            if msg is not None:
                self._rung.update(p for p in PRIORITIES[i + 1 :] if p in rung)
                if _pending(msg) != 0:
                    self._rung.add(priority)
                return msg
        return None

    async def _pull(self, priority: str, wait: float | None) -> Msg | None:
        try:
            return await self._pullers[priority].pull(wait)
        except Exception as exc:  # connection trouble: log, back off, keep the loop alive
            logger.warning("pull failed priority=%s err=%s", priority, exc)
            await asyncio.sleep(_IDLE_WAIT)
            self._look = True
            return None

    async def _on_item(self, item: WorkItem, delivery: Delivery) -> None:
        """Take one decoded work item: check it can be routed, then run it (the consumer acks or not)."""
        if item.to_agent != self.role:
            raise Rejected(f"work item for role {item.to_agent!r} reached a {self.role} agent")
        try:
            token(item.task_id)  # it names the subject the result goes to
        except InvalidSubjectToken as exc:
            raise Rejected(f"work item with an unusable task id: {exc}") from exc
        msg = delivery.msg
        if self.instance_id in item.avoid_instances and delivery.num_delivered <= _AVOID_HANDBACKS:
            # re-assignment: let another instance of the role take it. Idle peers block on
            # their doorbell (a nak rings none) and look once per _IDLE_WAIT, so this instance
            # stops pulling for longer than that: a peer gets the first chance
            delivery.take()
            await msg.nak(delay=0.2)
            self._paused_until = time.monotonic() + _HANDBACK_PAUSE
            return
        if self._is_cancelled(item):
            await self._publish_result(
                item, BrainResult("failed", "cancelled before start"), now(), "cancelled"
            )
            return  # the consumer acks: the result is stored
        delivery.take()
        ctx = StepContext(item=item, settings=self.settings, instance_id=self.instance_id, bus=self.bus)
        started = now()
        # announced without waiting for the store's ack; the result waits for it (order on the stream)
        announce = asyncio.create_task(
            self._announce(item, started, ctx.run_id), name=f"started-{item.step_id}"
        )
        brain_task = asyncio.create_task(self._run_brain(item, ctx), name=f"brain-{item.step_id}")
        key = f"{item.task_id}/{item.step_id}/{item.attempt}"
        self._inflight[key] = _InFlight(item, msg, ctx, brain_task, started, announce)
        self._shell.spawn(self._supervise(key), f"step-{key}")

    async def _announce(self, item: WorkItem, started: float, run_id: str) -> None:
        await self.bus.publish(
            self.bus.subjects.step_result(item.to_agent, item.task_id),
            StepStarted(
                task_id=item.task_id,
                step_id=item.step_id,
                attempt=item.attempt,
                role=item.to_agent,
                instance_id=self.instance_id,
                started_at=started,
                run_id=run_id,
            ),
            msg_id=f"{item.task_id}.{item.step_id}.{item.attempt}.started.{run_id}",
        )

    def _is_cancelled(self, item: WorkItem) -> bool:
        return item.task_id in self._cancelled_tasks or (
            (item.task_id, item.step_id, item.attempt) in self._cancelled_steps
        )

    async def _tell_sender(self, delivery: Delivery, reason: str) -> None:
        """A work item went to the dead letters: tell the orchestrator, so the step fails now."""
        with contextlib.suppress(*DECODE_ERRORS):
            env = _envelope_decoder.decode(delivery.msg.data)
            if env.task_id and env.step_id and env.attempt:
                subject = self.bus.subjects.step_result(self.role, env.task_id)  # raises on an unusable id
                result = StepResult(
                    message_id=new_id("res"),
                    task_id=env.task_id,
                    step_id=env.step_id,
                    attempt=env.attempt,
                    role=self.role,
                    instance_id=self.instance_id,
                    status="failed",
                    summary="work item rejected",
                    timings=Timings(queued_at=now(), started_at=now(), finished_at=now()),
                    error=reason,
                )
                await self.bus.publish(subject, result)

    # --- one step ------------------------------------------------------------------------
    async def _run_brain(self, item: WorkItem, ctx: StepContext) -> BrainResult:
        try:
            return await self.brain.run(item, ctx)
        except asyncio.CancelledError:
            raise
        except CadreError as exc:
            logger.warning("brain error step=%s err=%s", item.step_id, exc)
            return BrainResult(
                "failed", f"{type(exc).__name__}: {exc}", error=str(exc), retryable=not exc.non_retryable
            )
        except Exception as exc:  # the error boundary: a brain bug fails the step, not the agent
            logger.exception("brain crashed step=%s", item.step_id)
            return BrainResult(
                "failed", f"brain crashed: {type(exc).__name__}", error=f"{type(exc).__name__}: {exc}"
            )

    async def _supervise(self, key: str) -> None:
        flight = self._inflight[key]
        interval = max(0.5, self.settings.ack_wait / 3)
        try:
            while True:
                done, _ = await asyncio.wait({flight.task}, timeout=interval)
                if done:
                    break
                with contextlib.suppress(Exception):
                    await flight.msg.in_progress()
            try:
                result = flight.task.result()
            except asyncio.CancelledError:
                await self._hand_back_or_cancel(flight)
                return
            await self._settle_announce(flight)
            await self._publish_result(flight.item, result, flight.started_at, run_id=flight.ctx.run_id)
            await flight.msg.ack()  # the result is stored: the item is done
        except Exception:
            logger.exception("step supervision failed key=%s; item will be redelivered", key)
        finally:
            flight.ctx.cleanup()
            self._inflight.pop(key, None)
            self._slot_free.set()
            self._doorbell.set()

    async def _settle_announce(self, flight: _InFlight) -> None:
        """Wait for the StepStarted publish (so it is stored before the result); a failed one is only logged."""
        try:
            await flight.announce
        except Exception as exc:  # the orchestrator learns the holder from the result instead
            logger.warning("started notice not stored step=%s err=%s", flight.item.step_id, exc)

    async def _hand_back_or_cancel(self, flight: _InFlight) -> None:
        item = flight.item
        await self._settle_announce(flight)
        if flight.ctx.cancelled.is_set():
            await self._publish_result(
                item,
                BrainResult("failed", "cancelled"),
                flight.started_at,
                "cancelled",
                run_id=flight.ctx.run_id,
            )
            await flight.msg.ack()
            logger.info("step cancelled step=%s attempt=%d", item.step_id, item.attempt)
        else:
            await flight.msg.nak()
            logger.info("step handed back on drain step=%s attempt=%d", item.step_id, item.attempt)

    async def _publish_result(
        self,
        item: WorkItem,
        result: BrainResult,
        started_at: float,
        status: StepOutcome | None = None,
        *,
        run_id: str = "",
    ) -> None:
        run_id = run_id or new_id("run")
        finished = now()
        final_status: StepOutcome = status or result.status
        step_result = StepResult(
            message_id=new_id("res"),
            task_id=item.task_id,
            step_id=item.step_id,
            attempt=item.attempt,
            role=item.to_agent,
            instance_id=self.instance_id,
            status=final_status,
            summary=result.summary,
            output=result.output,
            issues=result.issues,
            score=result.score,
            artifacts=result.artifacts,
            timings=Timings(queued_at=item.created_at, started_at=started_at, finished_at=finished),
            usage=result.usage,
            error=result.error,
            retryable=result.retryable,
            run_id=run_id,
        )
        step_result = await offload_output(self.bus, step_result)  # large outputs go by reference
        subject = self.bus.subjects.step_result(item.to_agent, item.task_id)
        msg_id = f"{item.task_id}.{item.step_id}.{item.attempt}.result.{run_id}"
        try:
            await self.bus.publish(subject, step_result, msg_id=msg_id)
        except MaxPayloadError:
            # what stays inline (findings, summary) still outgrows one message: running the
            # step again cannot help, so the step fails at once and says why
            step_result = _too_large(step_result, len(encode(step_result)), self.bus.nc.max_payload)
            final_status = "failed"
            await self.bus.publish(subject, step_result, msg_id=msg_id)
        if final_status == "completed":
            self.completed += 1
        else:
            self.failed += 1
        metric = MetricEvent(
            kind="step_completed" if final_status == "completed" else "step_failed",
            role=item.to_agent,
            instance_id=self.instance_id,
            at=finished,
            task_id=item.task_id,
            step_id=item.step_id,
            attempt=item.attempt,
            duration_s=finished - started_at,
            issues_found=len(result.issues) if item.to_agent == "reviewer" else None,
            usage=result.usage,
        )
        try:  # core NATS: the metrics stream stores it without a round trip on the step's path
            await self.bus.nc.publish(self.bus.subjects.metrics(self.role), encode(metric))
        except Exception as exc:  # noqa: BLE001 - a lost metric must not fail the step
            logger.warning("metric not sent step=%s err=%s", item.step_id, exc)
        logger.info(
            "step done task=%s step=%s attempt=%d status=%s secs=%.2f",
            item.task_id,
            item.step_id,
            item.attempt,
            final_status,
            finished - started_at,
        )

    # --- control -------------------------------------------------------------------------
    async def _on_cancel(self, msg: Msg) -> None:
        try:
            req = cancel_decoder.decode(msg.data)
        except DECODE_ERRORS as exc:
            with contextlib.suppress(Exception):  # a core callback: nothing may escape it
                await self.bus.dead_letter(
                    f"agent-{self.role}", msg.subject, msg.data, f"invalid cancel: {exc}"
                )
            return
        if req.step_id is None:
            _remember(self._cancelled_tasks, req.task_id)
        elif req.attempt is not None:
            _remember(self._cancelled_steps, (req.task_id, req.step_id, req.attempt))
        for flight in list(self._inflight.values()):
            it = flight.item
            if it.task_id != req.task_id:
                continue
            if req.step_id is not None and it.step_id != req.step_id:
                continue
            if req.attempt is not None and it.attempt != req.attempt:
                continue
            logger.info("cancel step=%s attempt=%d reason=%s", it.step_id, it.attempt, req.reason)
            flight.ctx.cancelled.set()
            flight.task.cancel()

    def status(self) -> AgentStatus:
        """What the ``status`` endpoint answers (and the heartbeat's pulse is made of)."""
        return AgentStatus(
            role=self.role,
            instance_id=self.instance_id,
            status="draining" if self._stopping.is_set() else ("busy" if self._inflight else "idle"),
            pulling=self._pulling and not self._stopping.is_set(),
            in_flight=sorted(self._inflight),
            completed=self.completed,
            failed=self.failed,
            started_at=self._shell.started_at,
        )

    async def _status(self, req: Request) -> None:
        await req.respond(encode(self.status()))

    def _pulse(self) -> Pulse:
        st = self.status()
        return Pulse(st.status, len(self._inflight), st.in_flight, pulling=st.pulling)

    def _stats(self) -> dict[str, Any]:
        return {
            "consumers": {self.consumer.name: self.consumer.stats.as_dict()},
            "loop_restarts": sum(self._shell.restarts.values()),
        }


def build_agent(
    role: AgentRole, brains: dict[str, str]
) -> Callable[[AgentSettings, Bus, AsyncExitStack], Awaitable[AgentService]]:
    """The ``build`` an agent's ``__main__`` hands ``run_service``: its brain (from ``brains``) and runtime."""

    async def build(settings: AgentSettings, bus: Bus, stack: AsyncExitStack) -> AgentService:
        brain = load_brain(settings, brains, role)
        close = getattr(brain, "aclose", None)
        if close is not None:
            stack.push_async_callback(close)
        return AgentService(bus, brain, settings, role)

    return build


def _too_large(result: StepResult, size: int, limit: int) -> StepResult:
    """``result`` as a failed, non-retryable step that names its size instead of carrying it."""
    reason = (
        f"result too large: {size} bytes after offloading the output, over the server's"
        f" max_payload of {limit} bytes (a summary or findings list this big cannot be sent)"
    )
    return msgspec.structs.replace(
        result,
        status="failed",
        summary=reason,
        output=None,
        issues=[],
        artifacts={},
        output_ref=None,
        error=reason,
        retryable=False,
    )
