"""The pull that held a message: nats.py's ``fetch(n)`` after a late status, against ``Puller.pull_batch``.

``python -m tests.bench.pulltail [trials]`` starts a nats-server on 127.0.0.1, and per
trial starts a batch pull on an empty work-queue consumer, drops a ``408`` status into
the pull's inbox (what the late expiry of an earlier pull looks like), publishes one
message, and prints how long the pull took to hand it over. nats.py's ``fetch`` then
sends a plain request for the whole batch and holds the message until its timeout
(docs/benchmarks.md, "The 2x latency tail"); ``Puller.pull_batch`` and ``Puller.consume``
(the orchestrator's) ignore a status addressed to an earlier request and hand the
message over at once. A diagnostic, not
a test: the figures depend on the machine.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable, Coroutine
from typing import Any

from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from shared.bus.consumer import Puller
from shared.bus.core import Bus
from shared.bus.settings import BusSettings
from shared.embedded.natsserver import NatsServer

__all__ = ["main"]

_STREAM, _SUBJECT = "PULLTAIL", "pulltail.x"
_Pull = Callable[[], Coroutine[Any, Any, list[Any]]]


async def _trial(bus: Bus, pull: _Pull, late_status_to: Callable[[], str]) -> str:
    task = asyncio.create_task(pull())
    await asyncio.sleep(0.05)  # the pull is waiting on the server (a diagnostic: no test relies on it)
    await bus.nc.publish(late_status_to(), b"", headers={"Status": "408"})
    await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    await bus.js.publish(_SUBJECT, b"work")
    msgs = await task
    for m in msgs:
        await m.ack()
    return f"{1e3 * (time.perf_counter() - t0):.0f} ms ({len(msgs)} message{'s' * (len(msgs) != 1)})"


async def _nats_py(bus: Bus) -> tuple[_Pull, Callable[[], str]]:
    psub = await bus.js.pull_subscribe_bind(durable="c", stream=_STREAM)
    return (lambda: psub.fetch(32, timeout=1.0)), (lambda: str(psub._deliver))


async def _puller(bus: Bus) -> tuple[_Pull, Callable[[], str]]:
    puller = await Puller(bus, _STREAM, "c").start()
    # a late status goes to the reply subject of the request before the current one
    return (lambda: puller.pull_batch(32, 1.0)), (lambda: f"{puller._inbox}.{puller._requests - 1}")


async def _consumer(bus: Bus) -> tuple[_Pull, Callable[[], str]]:
    puller = await Puller(bus, _STREAM, "c").start()

    async def first() -> list[Any]:  # the orchestrator hands each message over as it arrives
        async for msg in puller.consume(32, 1.0):
            return [msg]
        return []

    return first, (lambda: f"{puller._inbox}.{puller._requests - 1}")


_KINDS = {
    "nats.py fetch(32, timeout=1)": _nats_py,
    "Puller.pull_batch(32, 1.0)": _puller,
    "Puller.consume(32, 1.0), first message": _consumer,
}


async def main(trials: int = 3) -> None:
    server = NatsServer()
    server.start()
    try:
        for kind, make in _KINDS.items():
            bus = await Bus.open(
                BusSettings(nats_url=server.url, prefix="pulltail", bootstrap=False), "pulltail"
            )
            retention = RetentionPolicy.WORK_QUEUE
            await bus.js.add_stream(StreamConfig(name=_STREAM, subjects=[_SUBJECT], retention=retention))
            config = ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT)
            await bus.js.add_consumer(_STREAM, config)
            pull, late = await make(bus)
            for i in range(trials):
                print(f"{kind}, trial {i + 1}: message handed over after {await _trial(bus, pull, late)}")
            await bus.js.delete_stream(_STREAM)  # a lingering request of one kind must not serve the other
            await bus.close()
    finally:
        server.stop()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 3))
