"""The supervised consumer against a real nats-server: poison messages, retries, dead letters, restarts.

Issue 12: one bad message must never stop a role, and everything undecodable
or unroutable is a dead letter after at most one delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import msgspec
from nats.errors import TimeoutError as NatsTimeout

from shared.bus.consumer import Delivery, SupervisedConsumer
from shared.bus.core import Bus
from shared.bus.service import RESTART_LIMIT, Lifecycle, ServiceShell, serve
from shared.client.cli.settings import StackSettings
from shared.contract.protocol import (
    CancelRequest,
    DeadLetter,
    StepResult,
    Timings,
    dead_letter_decoder,
    encode,
    heartbeat_decoder,
    now,
)
from shared.embedded.launcher import Stack
from tests.helpers import (
    StepFeed,
    await_result,
    feature_task,
    make_item,
    stream_messages,
    wait_for_value,
)

ECHO = "tests.brains:EchoBrain"
SCRIPTED = "tests.brains:ScriptedBrain"


async def dead_letters(bus: Bus, at_least: int) -> list[DeadLetter]:
    async def probe() -> list[DeadLetter] | None:
        found = await stream_messages(
            bus.js, bus.subjects.stream_dead_letters, bus.subjects.dead_letter_all, dead_letter_decoder
        )
        return found if len(found) >= at_least else None

    return await wait_for_value(probe, what=f"{at_least} dead letter(s)")


async def stream_empty(bus: Bus, stream: str) -> None:
    async def probe() -> bool | None:
        return (await bus.js.stream_info(stream)).state.messages == 0 or None

    await wait_for_value(probe, what=f"stream {stream} to be empty")


async def test_a_poison_work_item_is_a_dead_letter_and_the_next_task_of_the_role_completes(
    bus: Bus, stack: Stack
) -> None:
    stack.add("orchestrator")
    stack.add("researcher", brain=SCRIPTED)
    poison = make_item("researcher", "research", "s1", task_id="evil.task", description="poison")
    await bus.publish(bus.subjects.work("researcher", "high"), poison)

    task = feature_task(task_type="research")
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    result = await await_result(bus, task.task_id)
    assert result.status == "completed", result.reason

    letters = await dead_letters(bus, 1)
    poisoned = [d for d in letters if "evil.task" in d.payload]
    assert poisoned and poisoned[0].service == "agent-researcher", letters
    assert "unusable task id" in poisoned[0].reason
    await stream_empty(bus, bus.subjects.stream_work)
    consumer = await bus.js.consumer_info(
        bus.subjects.stream_work, bus.subjects.work_consumer("researcher", "high")
    )
    assert consumer.num_redelivered == 0, "dead-lettered on its first delivery"


async def test_the_agent_heartbeat_says_it_is_pulling_and_stats_count_the_dead_letter(
    bus: Bus, stack: Stack
) -> None:
    stack.add("developer", brain=ECHO)
    await bus.js.publish(bus.subjects.work("developer", "normal"), b"[[[[not a work item")
    good = make_item("developer", "implementation", "good", task_id="task_ok", description="ok")
    await bus.publish(bus.subjects.work("developer", "normal"), good)
    feed = StepFeed(bus)
    await feed.wait(lambda m: isinstance(m, StepResult) and m.step_id == "good", "the good item's result")
    await feed.close()

    beats: list = []
    sub = await bus.nc.subscribe(bus.subjects.heartbeat("developer", "developer-1"))
    with contextlib.suppress(NatsTimeout, TimeoutError):
        beats.append(heartbeat_decoder.decode((await sub.next_msg(timeout=5)).data))
    await sub.unsubscribe()
    assert beats and beats[0].pulling is True

    async def stats() -> dict | None:
        inbox = bus.nc.new_inbox()
        s = await bus.nc.subscribe(inbox)
        await bus.nc.publish("$SRV.STATS.cadre-developer", b"", reply=inbox)
        found = None
        with contextlib.suppress(NatsTimeout, TimeoutError):
            while found is None:
                m = await s.next_msg(timeout=0.5)
                body = msgspec.json.decode(m.data) if m.data else {}
                if body.get("metadata", {}).get("prefix") == bus.subjects.prefix:
                    found = body
        await s.unsubscribe()
        if found is None:
            return None
        data = next(e for e in found["endpoints"] if e["name"] == "status")["data"]
        counters = data["consumers"]["work-developer"]
        return counters if counters["dead_lettered"] >= 1 and counters["handled"] >= 1 else None

    counters = await wait_for_value(stats, what="consumer counters in $SRV.STATS")
    assert counters["received"] >= 2 and counters["pulling"] is True


async def test_a_deeply_nested_submission_and_a_step_result_for_an_unusable_task_id_are_dead_letters_at_once(
    bus: Bus, stack: Stack
) -> None:
    stack.add("orchestrator")
    nested = b'{"type":"task","message_id":"m1","task":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}"
    await bus.js.publish(bus.subjects.task_submit("client"), nested)
    bad = StepResult(
        message_id="res_1",
        task_id="bad key*>",
        step_id="s1",
        attempt=1,
        role="developer",
        instance_id="developer-x",
        status="completed",
        summary="",
        timings=Timings(queued_at=now(), started_at=now(), finished_at=now()),
    )
    await bus.js.publish(bus.subjects.step_result("developer", "bad_key"), encode(bad))

    letters = await dead_letters(bus, 2)
    reasons = " | ".join(d.reason for d in letters)
    # msgspec's own RecursionError, or the decoders' depth guard where it is in place
    assert "RecursionError" in reasons or "nested too deeply" in reasons, reasons
    assert "unusable task id" in reasons or "$.task_id" in reasons, reasons  # decoded ids are constrained
    await stream_empty(bus, bus.subjects.stream_tasks)
    await stream_empty(bus, bus.subjects.stream_results)
    for stream, durable in (
        (bus.subjects.stream_tasks, bus.subjects.intake_consumer),
        (bus.subjects.stream_results, bus.subjects.results_consumer),
    ):
        info = await bus.js.consumer_info(stream, durable)
        assert info.num_redelivered == 0, f"{durable} redelivered a poison message"

    # and the orchestrator still works
    task = feature_task(task_type="research")
    stack.add("researcher", brain=SCRIPTED)
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    assert (await await_result(bus, task.task_id)).status == "completed"


async def test_cancel_answers_a_clear_refusal_for_a_wildcard_an_empty_or_an_unknown_task_id(
    bus: Bus, stack: Stack
) -> None:
    stack.add("orchestrator")

    async def ask(task_id: str):
        async def probe():
            try:
                reply = await bus.nc.request(
                    bus.subjects.task_cancel("client"), encode(CancelRequest(task_id=task_id)), timeout=2
                )
            except Exception:  # no responder yet while the orchestrator starts
                return None
            return reply

        reply = await wait_for_value(probe, what=f"a cancel reply for {task_id!r}")
        assert not (reply.headers or {}).get("Nats-Service-Error-Code"), reply.headers
        return msgspec.json.decode(reply.data)

    for task_id, expected in (("*", "not a task id"), ("", "empty task id"), ("no_such_task", "unknown")):
        body = await ask(task_id)
        assert body["type"] == "cancel_reply" and body["accepted"] is False, body
        assert expected in body["reason"], body


async def test_a_failing_handler_is_retried_with_backoff_and_one_that_always_fails_becomes_a_dead_letter(
    bus: Bus,
) -> None:
    s = bus.subjects
    psub = await bus.js.pull_subscribe_bind(durable=s.intake_consumer, stream=s.stream_tasks)
    calls: dict[bytes, int] = {}
    handled: list[bytes] = []

    async def handler(value: bytes, delivery: Delivery) -> None:
        calls[value] = calls.get(value, 0) + 1
        if value == b'"always"' or (value == b'"once"' and calls[value] == 1):
            raise RuntimeError(f"failure {calls[value]}")
        handled.append(value)

    consumer = SupervisedConsumer(
        bus=bus, name="t", service="test", decoder=lambda b: b, handler=handler, max_deliver=3
    )
    loop = asyncio.create_task(consumer.run(psub, concurrency=4))
    try:
        for body in (b'"once"', b'"always"', b'"fine"'):
            await bus.js.publish(s.task_submit("client"), body)
        letters = await dead_letters(bus, 1)
        await wait_for_value(lambda: _ready(len(handled) == 2), what="both good messages handled")
    finally:
        loop.cancel()
        await asyncio.gather(loop, return_exceptions=True)
    assert sorted(handled) == [b'"fine"', b'"once"']
    assert calls[b'"always"'] == 3
    assert len(letters) == 1 and letters[0].payload == '"always"'
    assert "failed 3 times" in letters[0].reason and "failure 3" in letters[0].reason
    assert consumer.stats.retried == 3 and consumer.stats.dead_lettered == 1


async def _ready(value: bool) -> bool | None:
    return value or None


async def test_a_supervised_loop_that_dies_is_restarted_and_one_that_keeps_dying_marks_the_service_fatal(
    bus: Bus, tmp_path: Path
) -> None:
    shell = ServiceShell(bus, "developer", "dev-x", 60.0)
    runs: list[int] = []
    resumed = asyncio.Event()

    async def flaky() -> None:
        runs.append(1)
        if len(runs) == 1:
            raise RuntimeError("first run dies")
        resumed.set()
        await asyncio.Event().wait()  # then lives until cancelled

    async def doomed() -> None:
        raise RuntimeError("always dies")

    shell.supervise(flaky, "flaky")
    await asyncio.wait_for(resumed.wait(), 10)
    assert not shell.fatal.is_set()
    shell.supervise(doomed, "doomed")
    await asyncio.wait_for(shell.fatal.wait(), 30)
    assert "doomed" in shell.fatal_reason and "always dies" in shell.fatal_reason
    assert shell.restarts == {"flaky": 1, "doomed": RESTART_LIMIT}
    await shell.close()


async def test_run_service_stops_a_service_that_gave_up_and_returns_a_non_zero_exit_code(
    bus: Bus, settings: StackSettings
) -> None:
    class Doomed(Lifecycle):
        """A service whose only loop always dies (what a broken consumer loop looks like)."""

        def __init__(self) -> None:
            self.shell = ServiceShell(bus, "developer", "dev-doomed", 60.0)
            self.stopped = False

        @property
        def fatal(self) -> asyncio.Event:
            return self.shell.fatal

        async def start(self) -> None:
            async def loop() -> None:
                raise RuntimeError("the pull loop broke")

            self.shell.supervise(loop, "pull-loop")

        async def stop(self) -> None:
            self.stopped = True
            await self.shell.close()

    service = Doomed()
    code = await asyncio.wait_for(serve(service, settings.drain_timeout), 60)
    assert code == 1 and service.stopped
    assert "the pull loop broke" in service.shell.fatal_reason
