"""The floor: the spec's 7-step chain on bare nats-py, in separate processes.

The same stream kinds as Cadre (work-queue streams for tasks, work and step
results; a limits stream for the result) and the same durable state write per
transition (one KV put), but none of Cadre's logic: no plan, no events, no
heartbeats, no health checks, no review loop. It is what any durable design on
this bus pays at least, so Cadre's figures are read against it.

Run as ``python -m tests.bench.floor orchestrator|researcher|developer|reviewer URL PREFIX``;
:func:`provision` creates the streams, consumers and bucket first.
"""

from __future__ import annotations

import asyncio
import signal
import sys

import msgspec
import nats
from nats.errors import TimeoutError as NatsTimeout
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, KeyValueConfig, RetentionPolicy, StreamConfig

__all__ = ["STEPS", "provision", "result_subject", "submit_subject"]

# (step id, role); the orchestrator does "design" itself, as Cadre's does
STEPS: list[tuple[str, str]] = [
    ("analyze", "researcher"),
    ("design", "orchestrator"),
    ("implement", "developer"),
    ("tests", "developer"),
    ("security_review", "reviewer"),
    ("performance", "developer"),
    ("final_review", "reviewer"),
]
ROLES = ("researcher", "developer", "reviewer")
_BATCH = 32


class Work(msgspec.Struct):
    task_id: str
    step: int
    task: msgspec.Raw  # the submitted task travels with every item, as Cadre's context does


class Done(msgspec.Struct):
    task_id: str
    step: int
    output: str


_work = msgspec.json.Decoder(Work)
_done = msgspec.json.Decoder(Done)
_task = msgspec.json.Decoder(dict)


def submit_subject(prefix: str) -> str:
    return f"{prefix}.task.submit"


def result_subject(prefix: str, task_id: str = ">") -> str:
    return f"{prefix}.result.{task_id}"


async def provision(js: JetStreamContext, prefix: str) -> None:
    """Streams, durable consumers and the state bucket (idempotent)."""
    up = prefix.upper()
    for name, subjects, retention in (
        ("TASKS", [submit_subject(prefix)], RetentionPolicy.WORK_QUEUE),
        ("WORK", [f"{prefix}.work.>"], RetentionPolicy.WORK_QUEUE),
        ("STEP_RESULTS", [f"{prefix}.step.result.>"], RetentionPolicy.WORK_QUEUE),
        ("EVENTS", [result_subject(prefix)], RetentionPolicy.LIMITS),
    ):
        await js.add_stream(
            StreamConfig(name=f"{up}_{name}", subjects=subjects, retention=retention, duplicate_window=120)
        )

    def durable(name: str, subject: str) -> ConsumerConfig:
        return ConsumerConfig(
            durable_name=name, filter_subject=subject, ack_policy=AckPolicy.EXPLICIT, ack_wait=30
        )

    await js.add_consumer(f"{up}_TASKS", durable("intake", submit_subject(prefix)))
    await js.add_consumer(f"{up}_STEP_RESULTS", durable("results", f"{prefix}.step.result.>"))
    for role in ROLES:
        await js.add_consumer(f"{up}_WORK", durable(role, f"{prefix}.work.{role}"))
    await js.create_key_value(KeyValueConfig(bucket=f"{up}_state", history=1))


async def _pull_forever(sub: JetStreamContext.PullSubscription, handle, batch: int):
    while True:  # until SIGTERM cancels it
        try:
            msgs = await sub.fetch(batch, timeout=5)
        except (NatsTimeout, TimeoutError):
            continue
        # a chain has one message in flight at a time, so a batch spans different tasks: handle
        # them concurrently (as Cadre's orchestrator does), the publishes pipelined on the connection
        await asyncio.gather(*(handle(msg) for msg in msgs))


async def _orchestrator(js: JetStreamContext, prefix: str) -> None:
    up = prefix.upper()
    kv = await js.key_value(f"{up}_state")
    tasks: dict[str, bytes] = {}

    async def advance(task_id: str, step: int) -> None:
        """Write the state, then delegate ``step`` (running ``design`` inline) or publish the result."""
        while True:
            await kv.put(task_id, msgspec.json.encode({"step": step}))
            if step == len(STEPS):
                await js.publish(result_subject(prefix, task_id), b'{"status":"completed"}')
                tasks.pop(task_id, None)
                return
            sid, role = STEPS[step]
            if role != "orchestrator":
                item = Work(task_id=task_id, step=step, task=msgspec.Raw(tasks[task_id]))
                await js.publish(
                    f"{prefix}.work.{role}",
                    msgspec.json.encode(item),
                    headers={"Nats-Msg-Id": f"{task_id}.{sid}"},
                )
                return
            step += 1  # the orchestrator's own step

    async def on_task(msg) -> None:
        task_id = _task.decode(msg.data)["task_id"]
        tasks[task_id] = msg.data
        await advance(task_id, 0)
        await msg.ack()

    async def on_result(msg) -> None:
        done = _done.decode(msg.data)
        if done.task_id in tasks:
            await advance(done.task_id, done.step + 1)
        await msg.ack()

    intake = await js.pull_subscribe_bind(durable="intake", stream=f"{up}_TASKS")
    results = await js.pull_subscribe_bind(durable="results", stream=f"{up}_STEP_RESULTS")
    await asyncio.gather(_pull_forever(intake, on_task, _BATCH), _pull_forever(results, on_result, _BATCH))


async def _agent(js: JetStreamContext, prefix: str, role: str) -> None:
    async def on_work(msg) -> None:
        item = _work.decode(msg.data)
        done = Done(task_id=item.task_id, step=item.step, output=f"{STEPS[item.step][0]} done by {role}")
        await js.publish(f"{prefix}.step.result.{item.task_id}", msgspec.json.encode(done))
        await msg.ack()

    sub = await js.pull_subscribe_bind(durable=role, stream=f"{prefix.upper()}_WORK")
    await _pull_forever(sub, on_work, 1)  # one item at a time, as a Cadre agent


async def _main(role: str, url: str, prefix: str) -> None:
    nc = await nats.connect(url, name=f"floor-{role}")
    js = nc.jetstream()
    work = asyncio.ensure_future(
        _orchestrator(js, prefix) if role == "orchestrator" else _agent(js, prefix, role)
    )
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, work.cancel)
    try:
        await work
    except asyncio.CancelledError:
        pass  # SIGTERM: the benchmark is over
    finally:
        await nc.close()


if __name__ == "__main__":
    asyncio.run(_main(*sys.argv[1:4]))
