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
import signal
from dataclasses import dataclass, field
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import FetchTimeoutError
from nats.micro.request import Request

from shared.brains import Brain, BrainResult, StepContext, load_brain
from shared.bus import Bus
from shared.errors import CadreError
from shared.outputs import offload_output
from shared.protocol import (
    PRIORITIES,
    MetricEvent,
    StepResult,
    StepStarted,
    Timings,
    WorkItem,
    cancel_decoder,
    new_id,
    now,
    work_decoder,
)
from shared.service import Lifecycle, Pulse, ServiceShell
from shared.settings import Settings

__all__ = ["AgentService", "run_agent", "run_service"]

logger = logging.getLogger(__name__)

# How long one empty pull waits; an idle instance also wakes on the doorbell.
_PULL_WAIT = 0.05
_IDLE_WAIT = 1.0
# An item that names this instance in avoid_instances is handed back this many times at most.
_AVOID_HANDBACKS = 3


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


@dataclass
class AgentService(Lifecycle):
    """Consumes one role's work queue and runs a brain on each item."""

    bus: Bus
    brain: Brain
    settings: Settings
    role: str = field(init=False)
    instance_id: str = field(init=False)
    _shell: ServiceShell = field(init=False)
    _stopping: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _doorbell: asyncio.Event = field(default_factory=asyncio.Event, init=False)
    _inflight: dict[str, _InFlight] = field(default_factory=dict, init=False)
    _cancelled_tasks: set[str] = field(default_factory=set, init=False)
    _cancelled_steps: set[tuple[str, str, int]] = field(default_factory=set, init=False)
    completed: int = field(default=0, init=False)
    failed: int = field(default=0, init=False)

    def __post_init__(self) -> None:
        self.role = self.settings.role
        self.instance_id = self.settings.instance_id
        self._shell = ServiceShell(self.bus, self.role, self.instance_id, self.settings.heartbeat_interval)

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        s = self.bus.subjects
        self._pulls = {}
        for priority in PRIORITIES:
            self._pulls[priority] = await self.bus.js.pull_subscribe_bind(
                durable=s.work_consumer(self.role, priority), stream=s.stream_work
            )
        await self._shell.subscribe(s.work_all(self.role), self._ring)
        await self._shell.subscribe(s.cancel_all, self._on_cancel)
        status = f"{s.prefix}.svc.{self.role}.{self.instance_id}.status"
        await self._shell.add_micro(f"Cadre {self.role} agent", {"status": (status, self._status)})
        self._shell.spawn(self._pull_loop(), "pull-loop")
        self._shell.heartbeat_loop(self._pulse)
        logger.info("agent started role=%s instance=%s", self.role, self.instance_id)

    async def stop(self) -> None:
        """Drain: stop pulling, let in-flight work finish within the bound, hand back the rest."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self._doorbell.set()
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
        logger.info("agent stopped role=%s instance=%s", self.role, self.instance_id)

    # --- pulling -------------------------------------------------------------------
    async def _ring(self, _msg: Msg) -> None:
        self._doorbell.set()

    async def _pull_loop(self) -> None:
        while not self._stopping.is_set():
            if len(self._inflight) >= self.settings.concurrency:
                await self._wait_doorbell()
                continue
            self._doorbell.clear()
            msg = await self._next_message()
            if msg is None:
                await self._wait_doorbell()
                continue
            await self._accept(msg)

    async def _wait_doorbell(self) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._doorbell.wait(), _IDLE_WAIT)

    async def _next_message(self) -> Msg | None:
        for priority in PRIORITIES:
            if self._stopping.is_set():
                return None
            try:
                msgs = await self._pulls[priority].fetch(1, timeout=_PULL_WAIT)
            except (NatsTimeoutError, FetchTimeoutError, TimeoutError):
                continue
            except Exception as exc:  # connection trouble: log, back off, keep the loop alive
                logger.warning("pull failed priority=%s err=%s", priority, exc)
                await asyncio.sleep(_IDLE_WAIT)
                return None
            if msgs:
                return msgs[0]
        return None

    async def _accept(self, msg: Msg) -> None:
        try:
            item = work_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self._reject(msg, f"invalid work item: {exc}")
            return
        if item.to_agent != self.role:
            await self._reject(msg, f"work item for role {item.to_agent!r} reached a {self.role} agent")
            return
        delivered = msg.metadata.num_delivered if msg.metadata else 1
        if self.instance_id in item.avoid_instances and delivered <= _AVOID_HANDBACKS:
            # re-assignment: let another instance of the role take it
            await msg.nak(delay=0.2)
            return
        if item.task_id in self._cancelled_tasks or (
            (item.task_id, item.step_id, item.attempt) in self._cancelled_steps
        ):
            await self._publish_result(
                item, BrainResult("failed", "cancelled before start"), now(), "cancelled"
            )
            await msg.ack_sync()
            return
        ctx = StepContext(item=item, settings=self.settings, instance_id=self.instance_id, bus=self.bus)
        started = now()
        await self.bus.publish(
            self.bus.subjects.step_result(item.task_id),
            StepStarted(
                task_id=item.task_id,
                step_id=item.step_id,
                attempt=item.attempt,
                role=item.to_agent,
                instance_id=self.instance_id,
                started_at=started,
                run_id=ctx.run_id,
            ),
            msg_id=f"{item.task_id}.{item.step_id}.{item.attempt}.started.{ctx.run_id}",
        )
        brain_task = asyncio.create_task(self._run_brain(item, ctx), name=f"brain-{item.step_id}")
        key = f"{item.task_id}/{item.step_id}/{item.attempt}"
        self._inflight[key] = _InFlight(item, msg, ctx, brain_task, started)
        self._shell.spawn(self._supervise(key), f"step-{key}")

    async def _reject(self, msg: Msg, reason: str) -> None:
        await self.bus.dead_letter(
            f"agent-{self.role}", msg.subject, msg.data, reason, dict(msg.headers or {})
        )
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            env = _envelope_decoder.decode(msg.data)
            if env.task_id and env.step_id and env.attempt:
                # the orchestrator sent it: tell it why, so the step fails instead of timing out
                result = StepResult(
                    message_id=new_id("res"),
                    task_id=env.task_id,
                    step_id=env.step_id,
                    attempt=env.attempt,
                    role=self.role,  # type: ignore[arg-type]
                    instance_id=self.instance_id,
                    status="failed",
                    summary="work item rejected",
                    timings=Timings(queued_at=now(), started_at=now(), finished_at=now()),
                    error=reason,
                )
                await self.bus.publish(self.bus.subjects.step_result(env.task_id), result)
        await msg.ack_sync()

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
            await self._publish_result(flight.item, result, flight.started_at, run_id=flight.ctx.run_id)
            await flight.msg.ack_sync()
        except Exception:
            logger.exception("step supervision failed key=%s; item will be redelivered", key)
        finally:
            flight.ctx.cleanup()
            self._inflight.pop(key, None)
            self._doorbell.set()

    async def _hand_back_or_cancel(self, flight: _InFlight) -> None:
        item = flight.item
        if flight.ctx.cancelled.is_set():
            await self._publish_result(
                item,
                BrainResult("failed", "cancelled"),
                flight.started_at,
                "cancelled",
                run_id=flight.ctx.run_id,
            )
            await flight.msg.ack_sync()
            logger.info("step cancelled step=%s attempt=%d", item.step_id, item.attempt)
        else:
            await flight.msg.nak()
            logger.info("step handed back on drain step=%s attempt=%d", item.step_id, item.attempt)

    async def _publish_result(
        self,
        item: WorkItem,
        result: BrainResult,
        started_at: float,
        status: str | None = None,
        *,
        run_id: str = "",
    ) -> None:
        run_id = run_id or new_id("run")
        finished = now()
        final_status = status or result.status
        step_result = StepResult(
            message_id=new_id("res"),
            task_id=item.task_id,
            step_id=item.step_id,
            attempt=item.attempt,
            role=item.to_agent,
            instance_id=self.instance_id,
            status=final_status,  # type: ignore[arg-type]
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
        await self.bus.publish(
            self.bus.subjects.step_result(item.task_id),
            step_result,
            msg_id=f"{item.task_id}.{item.step_id}.{item.attempt}.result.{run_id}",
        )
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
        with contextlib.suppress(Exception):
            await self.bus.publish(self.bus.subjects.metrics(self.role), metric)
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
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            await self.bus.dead_letter(f"agent-{self.role}", msg.subject, msg.data, f"invalid cancel: {exc}")
            return
        if req.step_id is None:
            self._cancelled_tasks.add(req.task_id)
        elif req.attempt is not None:
            self._cancelled_steps.add((req.task_id, req.step_id, req.attempt))
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

    def status(self) -> dict[str, Any]:
        return {
            "role": self.role,
            "instance_id": self.instance_id,
            "status": "draining" if self._stopping.is_set() else ("busy" if self._inflight else "idle"),
            "in_flight": sorted(self._inflight),
            "completed": self.completed,
            "failed": self.failed,
            "started_at": self._shell.started_at,
        }

    async def _status(self, req: Request) -> None:
        await req.respond(msgspec.json.encode(self.status()))

    def _pulse(self) -> Pulse:
        st = self.status()
        return Pulse(st["status"], len(self._inflight), st["in_flight"])


async def run_service(service: Any, settings: Settings) -> None:
    """Run a started/stoppable service until SIGINT or SIGTERM, then stop it (drain, bounded)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    try:
        await stop.wait()
        logger.info("signal received, draining")
    finally:
        try:
            await asyncio.wait_for(service.stop(), settings.drain_timeout + 5)
        except TimeoutError:
            logger.error("stop did not finish within %.0fs; exiting anyway", settings.drain_timeout + 5)


def run_agent(role: str, brains: dict[str, str]) -> None:
    """Entry point of an agent service process (``python -m services.<role>``)."""
    from shared.logs import setup_logging

    settings = Settings(role=role)
    setup_logging(f"{role}:{settings.instance_id}", settings.log_level)

    async def main() -> None:
        brain = load_brain(settings, brains)
        bus = await Bus.open(settings, f"cadre-{role}-{settings.instance_id}")
        try:
            await run_service(AgentService(bus, brain, settings), settings)
        finally:
            close = getattr(brain, "aclose", None)
            if close is not None:
                await close()
            await bus.close()

    asyncio.run(main())
