"""The lifecycle plumbing every Cadre service process shares.

The orchestrator, the monitor and the agent runtime each own background
tasks, core subscriptions, a nats micro service and a heartbeat on
``<prefix>.heartbeat.<role>.<instance>``. ``ServiceShell`` holds those so a
service only says what is its own; ``close()`` takes them down once (tasks
cancelled and awaited, then the micro service and the subscriptions, each
step bounded so a stuck one cannot keep the process from exiting).

``run_service(name, settings_type, build)`` is the one wiring shape of every
service's ``__main__``: settings of the service's own type, logging, a bus
connection and an ``AsyncExitStack`` for what ``build`` opens, then ``serve``
(signals, drain, exit code).
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any, Literal, NoReturn, Self, TypeVar

from nats.aio.msg import Msg
from nats.micro import add_service
from nats.micro.request import Handler
from nats.micro.service import EndpointStats, Service

from shared import __version__
from shared.bus.core import Bus
from shared.bus.logs import setup_logging
from shared.bus.settings import BusSettings
from shared.contract.protocol import Heartbeat, encode, now

__all__ = [
    "Lifecycle",
    "Pulse",
    "ServiceShell",
    "run_service",
    "serve",
    "STOP_STEP_BOUND",
    "RESTART_LIMIT",
    "RESTART_WINDOW",
]

logger = logging.getLogger(__name__)

# How long one shutdown step (micro stop, one unsubscribe...) may take before we go on without it.
STOP_STEP_BOUND = 5.0
# A supervised loop that dies this many times within the window makes the process exit non-zero.
RESTART_LIMIT = 5
RESTART_WINDOW = 60.0
RESTART_BACKOFF_CAP = 5.0


@dataclass(frozen=True)
class Pulse:
    """What a heartbeat says about the service's work right now."""

    status: Literal["idle", "busy", "draining"] = "idle"
    in_flight: int = 0
    current: list[str] = field(default_factory=list)
    # True while the instance's consumer loop is alive and taking work; None: it has no consumer
    pulling: bool | None = None


class Lifecycle(ABC):
    """``async with service:`` starts it and stops it, for any class with ``start()`` and ``stop()``."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


class ServiceShell:
    """Background tasks, subscriptions, the micro service and the heartbeat of one service instance."""

    def __init__(
        self,
        bus: Bus,
        role: str,
        instance_id: str,
        heartbeat_interval: float,
        *,
        stop_bound: float = STOP_STEP_BOUND,
    ) -> None:
        self.bus = bus
        self.role = role
        self.instance_id = instance_id
        self.heartbeat_interval = heartbeat_interval
        self.stop_bound = stop_bound
        self.started_at = now()
        self.micro: Service | None = None
        self.tasks: set[asyncio.Task[Any]] = set()  # the live ones; a finished task drops out
        self._subs: list[Any] = []
        self._closed = False
        self.restarts: dict[str, int] = {}
        # resolved with a reason when a supervised loop keeps dying: the process should exit non-zero
        self.fatal = asyncio.Event()
        self.fatal_reason = ""

    @property
    def closed(self) -> bool:
        return self._closed

    # --- what the service starts -------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Run ``coro`` in the background until it ends or ``close()`` cancels it.

        A task that dies of an exception is logged with its traceback (never silently).
        """
        task = asyncio.create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._reap)
        return task

    def _reap(self, task: asyncio.Task[Any]) -> None:
        self.tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            logger.error("%s background task %s died: %s", self.role, task.get_name(), exc, exc_info=exc)

    def supervise(self, factory: Callable[[], Coroutine[Any, Any, Any]], name: str) -> asyncio.Task[Any]:
        """Run a loop that must live as long as the service: restarted (with backoff) when it dies.

        A loop that returns has ended on purpose (e.g. the service is draining).

        A loop that keeps dying (``RESTART_LIMIT`` times within ``RESTART_WINDOW`` seconds)
        sets ``fatal``: ``serve`` then stops the service and the process exits
        non-zero, so its supervisor restarts it, instead of heartbeating while doing nothing.
        """

        async def keeper() -> None:
            failures: list[float] = []
            while True:
                try:
                    await factory()
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    why = f"died: {type(exc).__name__}: {exc}"
                    logger.exception("%s loop %s died; restarting", self.role, name)
                else:
                    logger.info("%s loop %s ended", self.role, name)  # on purpose (e.g. draining)
                    return
                self.restarts[name] = self.restarts.get(name, 0) + 1
                t = time.monotonic()
                failures = [f for f in failures if t - f < RESTART_WINDOW] + [t]
                if len(failures) >= RESTART_LIMIT:
                    reason = f"loop {name} {why} {len(failures)} times within {RESTART_WINDOW:.0f}s"
                    logger.critical("%s is giving up: %s", self.role, reason)
                    self.fatal_reason = self.fatal_reason or reason
                    self.fatal.set()
                    return
                await asyncio.sleep(min(RESTART_BACKOFF_CAP, 0.1 * 2 ** (len(failures) - 1)))

        return self.spawn(keeper(), name)

    async def subscribe(self, subject: str, cb: Callable[[Msg], Awaitable[None]], *, queue: str = "") -> Any:
        """A core NATS subscription that ``close()`` unsubscribes."""
        return self.track(await self.bus.nc.subscribe(subject, queue=queue, cb=cb))

    def track(self, sub: Any) -> Any:
        """Unsubscribe ``sub`` (any subscription, e.g. a JetStream one) on ``close()``."""
        self._subs.append(sub)
        return sub

    async def add_micro(
        self,
        description: str,
        endpoints: Mapping[str, tuple[str, Handler]],
        *,
        metadata: Mapping[str, str] | None = None,
        stats: Mapping[str, Callable[[], Any]] | None = None,
    ) -> Service:
        """Register nats micro ``cadre-<role>`` (found by ``$SRV.*`` and the monitor by its ``prefix``).

        ``stats`` maps an endpoint name to a function whose value ``$SRV.STATS`` shows as
        that endpoint's ``data`` (the consumers' counters).
        """
        extra = dict(stats or {})

        def stats_handler(ep: EndpointStats) -> Any:
            fn = extra.get(ep.name)
            return fn() if fn is not None else None

        self.micro = await add_service(
            self.bus.nc,
            name=f"cadre-{self.role}",
            version=__version__,
            description=description,
            metadata={
                "role": self.role,
                "instance_id": self.instance_id,
                "prefix": self.bus.subjects.prefix,
                **(metadata or {}),
            },
            stats_handler=stats_handler,
        )
        for name, (subject, handler) in endpoints.items():
            await self.micro.add_endpoint(name=name, subject=subject, handler=handler)
        return self.micro

    # --- heartbeat -------------------------------------------------------------------------------
    async def beat(self, pulse: Pulse | None = None) -> None:
        """Publish one heartbeat now (best effort: a lost one is what the health check is for)."""
        p = pulse or Pulse()
        hb = Heartbeat(
            role=self.role,  # type: ignore[arg-type]  # a Role or "monitor", as the service says
            instance_id=self.instance_id,
            at=now(),
            started_at=self.started_at,
            status=p.status,
            in_flight=p.in_flight,
            current=p.current,
            interval=self.heartbeat_interval,
            pulling=p.pulling,
        )
        try:
            await self.bus.nc.publish(self.bus.subjects.heartbeat(self.role, self.instance_id), encode(hb))
        except Exception as exc:  # noqa: BLE001 - best effort
            logger.debug("heartbeat not sent role=%s err=%s", self.role, exc)

    def heartbeat_loop(self, pulse: Callable[[], Pulse] | None = None) -> asyncio.Task[Any]:
        """Heartbeat every ``heartbeat_interval`` seconds, saying what ``pulse()`` says, until closed."""

        async def loop() -> None:
            while True:
                await self.beat(pulse() if pulse is not None else None)
                await asyncio.sleep(self.heartbeat_interval)

        return self.spawn(loop(), f"{self.role}-heartbeat")

    # --- shutdown --------------------------------------------------------------------------------
    async def close(self) -> bool:
        """Cancel and await the tasks, stop the micro service, unsubscribe; False if already closed."""
        if self._closed:
            return False
        self._closed = True
        tasks = list(self.tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self.micro is not None:
            await self.bounded(self.micro.stop(), "micro stop")
        for sub in self._subs:
            await self.bounded(sub.unsubscribe(), "unsubscribe")
        return True

    async def bounded(self, step: Awaitable[object], what: str) -> None:
        """Await one shutdown step for at most ``stop_bound`` seconds; log and go on if it fails."""
        try:
            await asyncio.wait_for(step, self.stop_bound)
        except TimeoutError:
            logger.warning("%s %s did not finish within %.0fs; going on", self.role, what, self.stop_bound)
        except Exception as exc:  # closing anyway: log and go on
            logger.warning("%s %s failed err=%s", self.role, what, exc)


# --- the process around a service ------------------------------------------------------------------
S = TypeVar("S", bound=BusSettings)


def run_service(
    name: str,
    settings_type: type[S],
    build: Callable[[S, Bus, AsyncExitStack], Awaitable[Lifecycle]],
) -> NoReturn:
    """Entry point of every service process (``python -m services.<name>``); exits with ``serve``'s code.

    Builds ``settings_type`` from the ``CADRE_*`` environment, sets up logging, connects to
    the bus, then ``build(settings, bus, stack)`` returns the service; whatever ``build``
    opens it hands to ``stack`` (an ``AsyncExitStack``), closed in reverse after the
    service has stopped, the bus last.
    """
    settings = settings_type()
    setup_logging(f"{name}:{settings.instance_id}", settings.log_level)

    async def main() -> int:
        async with AsyncExitStack() as stack:
            bus = await Bus.open(settings, f"cadre-{name}-{settings.instance_id}")
            stack.push_async_callback(bus.close)
            service = await build(settings, bus, stack)
            return await serve(service, settings.drain_timeout)

    sys.exit(asyncio.run(main()))


async def serve(service: Lifecycle, drain_timeout: float) -> int:
    """Run a service until SIGINT or SIGTERM, then stop it (drain, bounded).

    Returns the process exit code: 0 after a signal, 1 when the service gave up on itself
    (its ``fatal`` event: a supervised loop kept dying) so its supervisor restarts it.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await service.start()
    fatal: asyncio.Event = getattr(service, "fatal", None) or asyncio.Event()
    code = 0
    try:
        waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(fatal.wait())]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        if fatal.is_set() and not stop.is_set():
            code = 1
            logger.critical("service failed, exiting non-zero so it is restarted")
        else:
            logger.info("signal received, draining")
    finally:
        try:
            await asyncio.wait_for(service.stop(), drain_timeout + 5)
        except TimeoutError:
            logger.error("stop did not finish within %.0fs; exiting anyway", drain_timeout + 5)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
    return code
