"""The agent runtime against a real nats-server and real agent processes."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import msgspec
from nats.errors import TimeoutError as NatsTimeout

from shared.bus.core import Bus
from shared.contract.protocol import DeadLetter, StepResult, StepStarted, WorkItem, dead_letter_decoder
from shared.embedded.launcher import Stack
from tests.helpers import StepFeed, make_item, stream_messages, wait_for_value

ECHO = "tests.brains:EchoBrain"


def work_item(step: str = "s1", **input_data: object) -> WorkItem:
    return make_item(
        "developer",
        "implementation",
        step,
        task_id="task_rt",
        description=f"do {step}",
        input_data=input_data,
    )


def results(msgs):
    return [m for m in msgs if isinstance(m, StepResult)]


async def test_a_work_item_is_processed_by_exactly_one_of_two_instances(bus: Bus, stack: Stack) -> None:
    stack.add("developer", brain=ECHO)
    stack.add("developer", brain=ECHO)
    await bus.publish(bus.subjects.work("developer", "normal"), work_item())
    feed = StepFeed(bus)
    done = await feed.wait(lambda m: isinstance(m, StepResult), "the step result")
    assert done[0].status == "completed"
    assert done[0].instance_id in {"developer-1", "developer-2"}
    assert done[0].summary.startswith(f"done by {done[0].instance_id}")
    # nothing else arrives: exactly one instance processed it
    await feed.wait(lambda m: isinstance(m, StepStarted), "the started notice")
    starts = [m for m in feed.messages if isinstance(m, StepStarted)]
    assert len(starts) == 1 and starts[0].instance_id == done[0].instance_id
    assert len(results(feed.messages)) == 1


async def test_high_priority_work_is_taken_before_normal_work(bus: Bus, stack: Stack, tmp_path: Path) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    await bus.publish(bus.subjects.work("developer", "normal"), work_item("first", hold_file=str(hold)))
    stack.add("developer", brain=ECHO)
    feed = StepFeed(bus)
    await feed.wait(lambda m: isinstance(m, StepStarted) and m.step_id == "first", "first step started")
    await bus.publish(bus.subjects.work("developer", "low"), work_item("low"))
    await bus.publish(bus.subjects.work("developer", "normal"), work_item("normal"))
    await bus.publish(bus.subjects.work("developer", "high"), work_item("high"))
    hold.unlink()
    await feed.wait(lambda m: len(results([m])) == 1 and m.step_id == "low", "all four results")
    order = [m.step_id for m in feed.messages if isinstance(m, StepResult)]
    assert order == ["first", "high", "normal", "low"]


async def test_killed_instance_work_is_redelivered_and_applied_once(
    bus: Bus, stack: Stack, tmp_path: Path
) -> None:
    a = stack.add("developer", brain=ECHO)
    b = stack.add("developer", brain=ECHO)
    hold = tmp_path / "hold"
    hold.touch()
    await bus.publish(bus.subjects.work("developer", "normal"), work_item("crashy", hold_file=str(hold)))
    feed = StepFeed(bus)
    started = await feed.wait(lambda m: isinstance(m, StepStarted), "a started notice")
    holder = started[0].instance_id
    (a if holder == "developer-1" else b).kill()
    hold.unlink()
    done = await feed.wait(lambda m: isinstance(m, StepResult), "the redelivered result", timeout=40)
    survivor = "developer-2" if holder == "developer-1" else "developer-1"
    assert done[0].instance_id == survivor
    assert done[0].status == "completed"
    keyed = {(m.step_id, m.attempt) for m in results(feed.messages)}
    assert keyed == {("crashy", 1)} and len(results(feed.messages)) == 1


async def test_malformed_and_invalid_messages_go_to_dead_letters_and_service_keeps_working(
    bus: Bus, stack: Stack
) -> None:
    stack.add("developer", brain=ECHO)
    subject = bus.subjects.work("developer", "normal")
    await bus.js.publish(subject, b"{not json")
    missing = msgspec.json.encode({"type": "work", "to_agent": "developer", "task_id": "task_rt"})
    await bus.js.publish(subject, missing)
    wrong_role = msgspec.to_builtins(work_item("badrole"))
    wrong_role["to_agent"] = "astrologer"
    await bus.js.publish(subject, msgspec.json.encode(wrong_role))
    await bus.publish(subject, work_item("good"))

    feed = StepFeed(bus)
    await feed.wait(lambda m: isinstance(m, StepResult) and m.step_id == "good", "the good item's result")

    async def dead() -> list[DeadLetter] | None:
        found = await stream_messages(
            bus.js, bus.subjects.stream_dead_letters, bus.subjects.dead_letter_all, dead_letter_decoder
        )
        return found if len(found) >= 3 else None

    letters = await wait_for_value(dead, what="three dead letters")
    reasons = [d.reason for d in letters]
    assert any("malformed" in r or "JSON" in r for r in reasons), reasons
    assert any("missing required field" in r for r in reasons), reasons
    assert any("astrologer" in r or "Invalid enum value" in r for r in reasons), reasons
    # the invalid-but-addressed item told its sender: a failed step result with the reason
    failed = await feed.wait(
        lambda m: isinstance(m, StepResult) and m.step_id == "badrole", "rejection result"
    )
    assert failed[0].status == "failed" and failed[0].error


async def test_brain_exception_becomes_a_failed_result_not_a_dead_consumer(bus: Bus, stack: Stack) -> None:
    stack.add("developer", brain=ECHO)
    await bus.publish(bus.subjects.work("developer", "normal"), work_item("boom", crash=True))
    await bus.publish(bus.subjects.work("developer", "normal"), work_item("after"))
    feed = StepFeed(bus)
    await feed.wait(lambda m: isinstance(m, StepResult) and m.step_id == "after", "the next item's result")
    boom = [m for m in results(feed.messages) if m.step_id == "boom"]
    assert boom[0].status == "failed"
    assert "scripted crash" in (boom[0].error or "")


async def test_sigterm_during_work_finishes_or_hands_back_the_item(
    bus: Bus, stack: Stack, tmp_path: Path
) -> None:
    a = stack.add("developer", brain=ECHO, drain_timeout=1.0)
    hold = tmp_path / "hold"
    hold.touch()
    await bus.publish(bus.subjects.work("developer", "normal"), work_item("drain", hold_file=str(hold)))
    feed = StepFeed(bus)
    await feed.wait(lambda m: isinstance(m, StepStarted), "started")
    t0 = time.monotonic()
    rc = await asyncio.to_thread(a.terminate, 20)
    assert rc == 0, "the agent exits cleanly after draining"
    assert time.monotonic() - t0 < 15
    # handed back: a second instance picks it up and completes it
    hold.unlink()
    stack.add("developer", brain=ECHO)
    done = await feed.wait(lambda m: isinstance(m, StepResult), "the handed-back item's result", timeout=40)
    assert done[0].status == "completed" and done[0].instance_id == "developer-2"


async def test_agent_answers_nats_micro_discovery(bus: Bus, stack: Stack) -> None:
    stack.add("developer", brain=ECHO)

    async def ping():
        inbox = bus.nc.new_inbox()
        sub = await bus.nc.subscribe(inbox)
        await bus.nc.publish("$SRV.PING.cadre-developer", b"", reply=inbox)
        replies = []
        with contextlib.suppress(NatsTimeout, TimeoutError):
            while True:
                m = await sub.next_msg(timeout=0.3)
                if m.data:  # a 503 no-responders status has no body
                    replies.append(msgspec.json.decode(m.data))
        await sub.unsubscribe()
        mine = [r for r in replies if r.get("metadata", {}).get("prefix") == bus.subjects.prefix]
        return mine or None

    found = await wait_for_value(ping, what="a micro PING reply")
    assert found[0]["metadata"]["role"] == "developer"
    assert found[0]["metadata"]["instance_id"] == "developer-1"
