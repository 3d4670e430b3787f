"""The bus's per-message paths against a real nats-server: pulls, publish acks, KV reads (issue 15).

What they must keep doing while made cheaper: a batch pull hands over what is there
and leaves no request waiting on the server; a status that ended an earlier request
never ends the current one; a publish ack is decoded (and a refusal raised as the
same error nats.py raises); the workflow bucket answers reads with direct gets.
"""

from __future__ import annotations

import asyncio

import pytest
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig
from nats.js.errors import BadRequestError, NoStreamResponseError

from shared.bus.consumer import Puller
from shared.bus.core import Bus, ensure_topology
from shared.contract.protocol import CancelRequest
from tests.helpers import wait_for_value

# a hang guard only (the calls under test answer at once); never a speed assertion
_GUARD = 20.0


async def _queue(bus: Bus, name: str) -> tuple[str, str]:
    """A work-queue stream of the test's own with one durable pull consumer."""
    stream = f"{bus.subjects.prefix.upper()}_{name}"
    await bus.js.add_stream(
        StreamConfig(
            name=stream, subjects=[f"{bus.subjects.prefix}.{name}.>"], retention=RetentionPolicy.WORK_QUEUE
        )
    )
    await bus.js.add_consumer(stream, ConsumerConfig(durable_name="c", ack_policy=AckPolicy.EXPLICIT))
    return stream, f"{bus.subjects.prefix}.{name}.x"


async def test_a_batch_pull_hands_over_what_is_there_and_leaves_no_request_waiting(bus: Bus) -> None:
    stream, subject = await _queue(bus, "batch")
    await bus.js.publish(subject, b"one")
    await bus.js.publish(subject, b"two")
    puller = await Puller(bus, stream, "c").start()
    try:
        msgs = await asyncio.wait_for(puller.pull_batch(32, wait=60.0), _GUARD)
        assert [m.data for m in msgs] == [b"one", b"two"]
        for m in msgs:
            await m.ack_sync()
        info = await bus.js.consumer_info(stream, "c")
        assert info.num_waiting == 0  # the request ended with what there was: nothing lingers
        assert info.num_ack_pending == 0
    finally:
        await puller.close()


async def test_a_batch_pull_on_an_empty_queue_takes_the_first_message_that_arrives(bus: Bus) -> None:
    stream, subject = await _queue(bus, "later")
    puller = await Puller(bus, stream, "c").start()
    try:
        pull = asyncio.create_task(puller.pull_batch(32, wait=60.0))

        async def held() -> bool | None:
            return (await bus.js.consumer_info(stream, "c")).num_waiting == 1 or None

        await wait_for_value(held, what="the pull request held by the server")
        await bus.js.publish(subject, b"late")
        msgs = await asyncio.wait_for(pull, _GUARD)
        assert [m.data for m in msgs] == [b"late"]
        assert (await bus.js.consumer_info(stream, "c")).num_waiting == 0
    finally:
        await puller.close()


async def test_a_status_that_ended_an_earlier_request_does_not_end_the_next_pull(bus: Bus) -> None:
    stream, subject = await _queue(bus, "stale")
    puller = await Puller(bus, stream, "c").start()
    try:
        assert await puller.pull(None) is None  # request 1: nothing there
        # a late "408 Request Timeout" for that earlier request reaches the inbox now
        await bus.nc.publish(f"{puller._inbox}.1", b"", headers={"Status": "408"})
        await bus.nc.flush()
        await bus.js.publish(subject, b"work")
        msgs = await asyncio.wait_for(puller.pull_batch(8, wait=60.0), _GUARD)
        assert [m.data for m in msgs] == [b"work"]
    finally:
        await puller.close()


async def test_a_publish_returns_the_decoded_ack_and_a_duplicate_is_marked(bus: Bus) -> None:
    req = CancelRequest(task_id="task_ack", reason="test")
    subject = bus.subjects.events("client", "task_ack", "note")
    first = await bus.publish(subject, req, msg_id="ack-1")
    again = await bus.publish(subject, req, msg_id="ack-1")
    assert first.stream == bus.subjects.stream_events and first.seq > 0 and not first.duplicate
    assert again.duplicate and again.seq == first.seq


async def test_a_refused_publish_raises_the_error_nats_py_raises(bus: Bus) -> None:
    with pytest.raises(NoStreamResponseError):
        await bus.publish_bytes(f"{bus.subjects.prefix}.nowhere.at.all", b"{}")
    stream, subject = await _queue(bus, "limited")
    info = await bus.js.stream_info(stream)
    info.config.max_msg_size = 8
    await bus.js.update_stream(info.config)
    with pytest.raises(BadRequestError):
        await bus.publish_bytes(subject, b"more than eight bytes")


async def test_the_workflow_bucket_answers_reads_with_direct_gets(bus: Bus) -> None:
    kv = await bus.workflows()
    info = await bus.js.stream_info(f"KV_{bus.subjects.kv_workflows}")
    assert info.config.allow_direct
    await kv.put("task_direct", b'{"v":1}')
    entry = await kv.get("task_direct")
    assert entry.value == b'{"v":1}' and entry.revision


async def test_a_workflow_bucket_made_without_direct_gets_is_given_them_by_the_topology(bus: Bus) -> None:
    stream = f"KV_{bus.subjects.kv_workflows}"
    info = await bus.js.stream_info(stream)
    info.config.allow_direct = False
    await bus.js.update_stream(info.config)
    await ensure_topology(bus.js, bus.settings)
    assert (await bus.js.stream_info(stream)).config.allow_direct


async def test_a_metric_sent_without_awaiting_its_ack_is_stored_once_per_dedup_id(bus: Bus) -> None:
    """The orchestrator's outbox sends metrics this way; a re-flush after a crash repeats them."""
    subject = bus.subjects.metrics("orchestrator")
    for _ in range(2):
        await bus.nc.publish(subject, b'{"kind":"x"}', headers={"Nats-Msg-Id": "task_m.metric.1"})
    await bus.nc.publish(subject, b'{"kind":"y"}', headers={"Nats-Msg-Id": "task_m.metric.2"})
    await bus.nc.flush()

    async def stored() -> int | None:
        n = (await bus.js.stream_info(bus.subjects.stream_metrics)).state.messages
        return n if n >= 2 else None

    assert await wait_for_value(stored, what="the metrics stored") == 2
    ack = await bus.publish_bytes(subject, b'{"kind":"x"}', msg_id="task_m.metric.1")
    assert ack.duplicate
    assert (await bus.js.stream_info(bus.subjects.stream_metrics)).state.messages == 2


async def test_a_consume_request_hands_over_each_message_as_it_arrives_and_ends_with_its_batch(
    bus: Bus,
) -> None:
    stream, subject = await _queue(bus, "consume")
    puller = await Puller(bus, stream, "c").start()
    got: list[bytes] = []

    async def consume() -> None:
        async for m in puller.consume(3, wait=60.0):
            got.append(m.data)
            await m.ack()

    task = asyncio.create_task(consume())
    try:
        await bus.js.publish(subject, b"1")

        async def first_handed_over() -> bool | None:
            return got == [b"1"] or None

        await wait_for_value(first_handed_over, what="the first message handed over on its own")
        # the same request is still open for the other two: no new request per message
        assert (await bus.js.consumer_info(stream, "c")).num_waiting == 1
        await bus.js.publish(subject, b"2")
        await bus.js.publish(subject, b"3")
        await asyncio.wait_for(task, _GUARD)
        assert got == [b"1", b"2", b"3"]
        assert (await bus.js.consumer_info(stream, "c")).num_waiting == 0
    finally:
        task.cancel()
        await puller.close()
