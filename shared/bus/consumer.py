"""The one supervised JetStream consumer: decode, handle, ack — and never die of a message.

Agents and the orchestrator consume JetStream through ``SupervisedConsumer``.
Every message passes one error boundary (modelled on nats micro's
``Endpoint._handle_request``, which counts and answers instead of raising):

- undecodable (any decode error, including a too-deep JSON ``RecursionError``)
  or unroutable (the handler raises ``Rejected`` or a ``CadreError`` with
  ``non_retryable``): a dead letter with the reason, the sender told when the
  consumer has a ``on_reject`` hook, then acked — on the first delivery;
- any other handler error: a nak with exponential backoff, and a dead letter
  once the delivery count reaches ``max_deliver`` (nothing is left behind in
  the stream);
- if even the dead letter or the ack fails (e.g. a stream leader election),
  the error is logged and counted; the message is redelivered after AckWait.

A handler may take the message over (``ctx.take()``) and ack it later itself,
as the agent does once the brain's result is stored. ``run()`` is the fetch
loop for consumers that take batches (the orchestrator); the agent calls
``process()`` from its own priority-aware pull loop. Counters feed the
service's nats micro ``$SRV.STATS`` (``stats()``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import msgspec
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from shared.bus.core import Bus
from shared.contract.errors import CadreError

__all__ = [
    "DECODE_ERRORS",
    "ConsumerStats",
    "Delivery",
    "KeyedLocks",
    "Puller",
    "Rejected",
    "SupervisedConsumer",
]

logger = logging.getLogger(__name__)

T = TypeVar("T")

# What a decoder may raise on hostile bytes: msgspec's own errors, and RecursionError on deep nesting.
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    msgspec.DecodeError,
    msgspec.ValidationError,
    RecursionError,
    UnicodeDecodeError,
    ValueError,
)

# Backoff for a message whose handler failed: 0.5s, 1s, 2s ... capped.
_BACKOFF_FIRST = 0.5
_BACKOFF_CAP = 30.0
# A fetch that fails (connection trouble, leader election) is retried after this pause.
_FETCH_RETRY = 1.0
# How long past its own expiry a pull may take to be answered before we give up on it.
_PULL_REPLY_BOUND = 2.0


class Rejected(CadreError):
    """Raised by a handler: this message can never be handled (unroutable); dead-letter it now."""

    non_retryable = True


@dataclass
class Delivery:
    """What a handler knows about the message besides its body (the handler's context)."""

    msg: Msg
    subject: str
    headers: dict[str, str]
    num_delivered: int
    stream_seq: int | None
    taken: bool = False

    def take(self) -> None:
        """The handler now owns the message and will ack / nak it itself (the consumer will not)."""
        self.taken = True


@dataclass
class ConsumerStats:
    """Counters of one consumer, as ``$SRV.STATS`` shows them in the endpoint's ``data``."""

    received: int = 0
    handled: int = 0
    dead_lettered: int = 0
    retried: int = 0
    errors: int = 0
    last_error: str = ""
    loop_restarts: int = 0
    processing_time_s: float = 0.0
    pulling: bool = False

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SupervisedConsumer(Generic[T]):
    """One durable pull consumer with a per-message error boundary.

    ``handler(value, delivery)`` gets the decoded message. ``on_reject(delivery, reason)``
    (optional) tells the sender why its message went to the dead letters.
    """

    bus: Bus
    name: str
    service: str  # the dead-letter subject token: <prefix>.deadletter.<service>
    decoder: Callable[[bytes], T]
    handler: Callable[[T, Delivery], Awaitable[None]]
    on_reject: Callable[[Delivery, str], Awaitable[None]] | None = None
    max_deliver: int = 5
    stats: ConsumerStats = field(default_factory=ConsumerStats)

    # --- the error boundary ---------------------------------------------------------------------
    async def process(self, msg: Msg) -> None:
        """Decode, handle, ack one message. Never raises (except cancellation)."""
        t0 = time.perf_counter()
        self.stats.received += 1
        meta = None
        with contextlib.suppress(Exception):
            meta = msg.metadata
        delivery = Delivery(
            msg=msg,
            subject=msg.subject,
            headers={k: str(v) for k, v in (msg.headers or {}).items()},
            num_delivered=(meta.num_delivered or 1) if meta else 1,
            stream_seq=meta.sequence.stream if meta and meta.sequence else None,
        )
        try:
            try:
                value = self.decoder(msg.data)
            except DECODE_ERRORS as exc:
                await self._dead(delivery, f"undecodable: {_describe(exc)}")
                return
            try:
                await self.handler(value, delivery)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if isinstance(exc, CadreError) and exc.non_retryable:
                    await self._dead(delivery, f"unroutable: {exc}")
                else:
                    await self._retry(delivery, exc)
                return
            self.stats.handled += 1
            if not delivery.taken:
                await msg.ack()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the dead letter, nak or ack itself failed: redelivered after AckWait
            self._error(exc)
            logger.warning(
                "consumer %s could not settle a message subject=%s err=%s; it will be redelivered",
                self.name,
                delivery.subject,
                _describe(exc),
            )
        finally:
            self.stats.processing_time_s += time.perf_counter() - t0

    async def _dead(self, delivery: Delivery, reason: str) -> None:
        msg = delivery.msg
        await self.bus.dead_letter(self.service, msg.subject, msg.data, reason, delivery.headers)
        self.stats.dead_lettered += 1
        if self.on_reject is not None:
            try:
                await self.on_reject(delivery, reason)
            except Exception as exc:  # telling the sender is best effort; the dead letter is kept
                self._error(exc)
                logger.warning("consumer %s could not tell the sender err=%s", self.name, _describe(exc))
        if not delivery.taken:
            await msg.ack()

    async def _retry(self, delivery: Delivery, exc: Exception) -> None:
        self._error(exc)
        n = delivery.num_delivered
        if n >= self.max_deliver:
            logger.error("consumer %s gave up after %d deliveries: %s", self.name, n, _describe(exc))
            await self._dead(delivery, f"failed {n} times, last: {_describe(exc)}")
            return
        delay = min(_BACKOFF_CAP, _BACKOFF_FIRST * 2 ** (n - 1))
        logger.warning(
            "consumer %s handler failed delivery=%d subject=%s err=%s; retry in %.1fs",
            self.name,
            n,
            delivery.subject,
            _describe(exc),
            delay,
            exc_info=not isinstance(exc, CadreError),
        )
        self.stats.retried += 1
        if not delivery.taken:
            await delivery.msg.nak(delay=delay)

    def _error(self, exc: BaseException) -> None:
        self.stats.errors += 1
        self.stats.last_error = _describe(exc)[:500]

    # --- the fetch loop ---------------------------------------------------------------------------
    async def run(self, source: Any, *, concurrency: int = 1, batch: int = 10, wait: float = 1.0) -> None:
        """Fetch and process until cancelled; up to ``concurrency`` messages at once.

        ``source`` is a :class:`Puller` or a nats.py pull subscription (its stream and
        durable are pulled through a ``Puller`` of this loop's own: see ``Puller.pull_batch``
        for why not nats.py's ``fetch``). Messages are started in stream order; a handler
        that needs per-key order takes a ``KeyedLocks`` lock before its first await.
        """
        if isinstance(source, Puller):
            await self._run(source, concurrency, batch, wait)
            return
        puller = await Puller(self.bus, source._stream, source._consumer).start()
        try:
            await self._run(puller, concurrency, batch, wait)
        finally:
            await puller.close()

    async def _run(self, puller: Puller, concurrency: int, batch: int, wait: float) -> None:
        slots = asyncio.Semaphore(concurrency)
        running: set[asyncio.Task[None]] = set()

        async def one(m: Msg) -> None:
            try:
                await self.process(m)
            finally:
                slots.release()

        self.stats.pulling = True
        try:
            while True:
                await slots.acquire()
                free = 1
                while free < batch and not slots.locked():
                    await slots.acquire()
                    free += 1
                got = 0
                try:
                    # one request for as many messages as there are free slots, each handed
                    # to a handler the moment it arrives
                    async for m in puller.consume(free, wait):
                        got += 1
                        t = asyncio.create_task(one(m), name=f"{self.name}-msg")
                        running.add(t)
                        t.add_done_callback(running.discard)
                except Exception as exc:  # connection trouble or a leader election: keep the loop
                    self._error(exc)
                    logger.warning("consumer %s fetch failed err=%s", self.name, _describe(exc))
                    for _ in range(free - got):
                        slots.release()
                    await asyncio.sleep(_FETCH_RETRY)
                    continue
                for _ in range(free - got):
                    slots.release()
        finally:
            self.stats.pulling = False
            for t in list(running):
                t.cancel()
            await asyncio.gather(*running, return_exceptions=True)


class Puller:
    """Pull from a durable consumer with the JetStream ``CONSUMER.MSG.NEXT`` request, on its own inbox.

    ``pull`` takes one message: at once (``no_wait``) or waiting up to ``wait`` s (nats.py's
    ``fetch`` always waits out its ``expires`` when the consumer is empty; an agent draining
    three priorities must not). ``pull_batch`` takes up to ``n``, returning as soon as any
    are there. One request at a time per ``Puller``; each request gets its own reply subject
    under the inbox, so a status that ends an earlier request (one given up on after a
    connection blip) can never end the current one, while a message it still delivers is
    work like any other and is handed over.
    """

    def __init__(self, bus: Bus, stream: str, durable: str) -> None:
        self.bus = bus
        self._next = f"{bus.js._prefix}.CONSUMER.MSG.NEXT.{stream}.{durable}"
        self._inbox = bus.nc.new_inbox()
        self._requests = 0
        self._sub: Any = None

    async def start(self) -> Puller:
        self._sub = await self.bus.nc.subscribe(f"{self._inbox}.*")
        return self

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.unsubscribe()

    async def pull(self, wait: float | None = None) -> Msg | None:
        """The next message, or None when there is none (now, or within ``wait``)."""
        req: dict[str, Any] = {"batch": 1}
        if wait:
            req["expires"] = int(wait * 1e9)
        else:
            req["no_wait"] = True
        msgs = await self._request(req, 1, wait or 0.0)
        return msgs[0] if msgs else None

    async def pull_batch(self, n: int, wait: float) -> list[Msg]:
        """Up to ``n`` messages: what is there now, else the first to arrive within ``wait`` s.

        One request with ``no_wait`` and ``expires``: the server holds it while the consumer
        is empty, and as soon as messages are there it sends what it has and ends the request
        (status 404), or ends it on expiry (408). So a message is handed over at once and no
        request lingers after this returns. nats.py's ``fetch(n)`` instead, whenever its first
        answer is a status (e.g. the late 408 of an earlier fetch that timed out on the client
        first, as its timeout and the request's expiry are equal), sends a plain request for
        ``n`` and holds the first message until ``n`` arrived or its timeout passed.
        """
        return await self._request({"batch": n, "expires": int(wait * 1e9), "no_wait": True}, n, wait)

    def consume(self, n: int, wait: float) -> AsyncIterator[Msg]:
        """Up to ``n`` messages, each yielded the moment it arrives, within ``wait`` s.

        One plain request for ``n`` held by the server for ``wait``: a steady flow of
        messages costs one request per ``n`` of them (not one request and one "no more"
        status per message, as ``pull_batch`` does when they come one at a time). The
        caller has room for all ``n`` (the orchestrator's free handler slots).
        """
        return self._responses({"batch": n, "expires": int(wait * 1e9)}, n, wait)

    async def _request(self, req: dict[str, Any], n: int, wait: float) -> list[Msg]:
        return [msg async for msg in self._responses(req, n, wait)]

    async def _responses(self, req: dict[str, Any], n: int, wait: float) -> AsyncIterator[Msg]:
        self._requests += 1
        reply = f"{self._inbox}.{self._requests}"
        await self.bus.nc.publish(self._next, msgspec.json.encode(req), reply=reply)
        deadline = time.monotonic() + wait + _PULL_REPLY_BOUND
        got = 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                msg: Msg = await self._sub.next_msg(timeout=left)
            except (NatsTimeoutError, TimeoutError):
                break
            status = (msg.headers or {}).get("Status")
            if status is None:
                got += 1
                yield msg  # this request's, or a late one of an earlier request: work either way
            elif status == "100" or msg.subject != reply:
                continue  # an idle heartbeat, or the end of an earlier request
            else:
                # 404 nothing (more) now, 408 expired, 409 e.g. a leadership change: the request ended
                if status not in ("404", "408"):
                    logger.debug("pull status=%s %s", status, (msg.headers or {}).get("Description"))
                break


class KeyedLocks:
    """One ``asyncio.Lock`` per key, dropped when nobody holds or waits for it (no slow leak)."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def hold(self, key: str) -> Any:
        lock, users = self._locks.get(key, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users <= 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    def __len__(self) -> int:
        return len(self._locks)


def _describe(exc: BaseException) -> str:
    text = str(exc)
    name = type(exc).__name__
    return f"{name}: {text}" if text else name
