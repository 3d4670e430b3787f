"""Test helpers: waiting on conditions instead of sleeping."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import msgspec
from nats.js import JetStreamContext

T = TypeVar("T")

__all__ = ["assert_eventually", "wait_for_value", "stream_messages"]


async def wait_for_value(
    fn: Callable[[], Awaitable[T | None]],
    timeout: float = 20.0,
    interval: float = 0.05,
    what: str = "condition",
) -> T:
    """Poll an async probe until it returns a truthy value; fail with ``what`` past ``timeout``."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = await fn()
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last value: {last!r}")


async def assert_eventually(fn: Callable[[], bool], timeout: float = 20.0, what: str = "condition") -> None:
    async def probe() -> bool | None:
        return fn() or None

    await wait_for_value(probe, timeout, what=what)


async def stream_messages(
    js: JetStreamContext, stream: str, subject: str, decoder: msgspec.json.Decoder
) -> list:
    """Every stored message of a stream on a subject filter, decoded (ordered, ephemeral)."""
    out = []
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return out
    sub = await js.subscribe(subject, stream=stream, ordered_consumer=True)
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except Exception:
                break
            out.append(decoder.decode(msg.data))
            if msg.metadata.num_pending == 0:
                break
    finally:
        await sub.unsubscribe()
    return out


async def await_result(bus, task_id: str, timeout: float = 60.0):
    """The task's FinalResult from the events stream (last message on its result subject)."""
    from nats.js.errors import NotFoundError

    from shared.protocol import result_decoder

    async def probe():
        try:
            msg = await bus.js.get_last_msg(bus.subjects.stream_events, bus.subjects.result(task_id))
        except NotFoundError:
            return None
        return result_decoder.decode(msg.data)

    return await wait_for_value(probe, timeout, interval=0.1, what=f"the final result of {task_id}")


async def task_events(bus, task_id: str) -> list:
    """Every stored event of a task, in order."""
    from shared.protocol import event_decoder

    return await stream_messages(
        bus.js, bus.subjects.stream_events, bus.subjects.events_all(task_id), event_decoder
    )
