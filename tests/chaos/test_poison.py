"""A poison message on every subject a service consumes: a dead letter with the reason, and nobody dies.

Every service runs as a real process. Onto each subject one of them reads
(JetStream work queues, the intake, step results, metrics, and the core
subjects for cancels, heartbeats and the broker's MaxDeliver advisory) go
undecodable bytes, JSON of the wrong shape and JSON nested 10 000 deep. Each
must come out as a dead letter on that subject (the advisory: only survived);
the cancel request gets an error answer; and afterwards every service is
still running and a task still completes end to end.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from shared.bus.core import Bus
from shared.contract.protocol import AGENT_ROLES, PRIORITIES, DeadLetter, dead_letter_decoder
from shared.embedded.launcher import Stack
from tests.chaos.cluster import SCRIPTED
from tests.helpers import await_result, feature_task, stream_messages, wait_for_value

pytestmark = pytest.mark.chaos

DEEP = ("[" * 10_000 + "]" * 10_000).encode()
GARBAGE = b"\xff\xfe\x00 not json {"


def poisons(kind: str) -> list[bytes]:
    """Undecodable bytes, JSON of the wrong shape for ``kind``, and JSON nested too deep."""
    wrong = {"type": kind, "message_id": 7, "task": "not an object", "task_id": ["x"], "role": 3}
    return [GARBAGE, json.dumps(wrong).encode(), DEEP]


async def _dead_letters(bus: Bus) -> list[DeadLetter]:
    s = bus.subjects
    return await stream_messages(bus.js, s.stream_dead_letters, s.dead_letter_all, dead_letter_decoder)


@pytest.mark.timeout(300)
async def test_poison_on_every_consumed_subject_is_dead_lettered_and_every_service_keeps_running(
    bus: Bus, stack: Stack, tmp_path: Path
) -> None:
    s = bus.subjects
    stack.add("orchestrator")
    for role in AGENT_ROLES:
        stack.add(role, brain=SCRIPTED)
    stack.add("monitor", monitor_http_port=0)
    # everyone is up before the poison: each heartbeat is on the stream of metrics' sibling subjects
    seen: set[str] = set()

    async def on_hb(msg) -> None:  # noqa: ANN001
        seen.add(msg.subject.rsplit(".", 2)[-2])

    hb_sub = await bus.nc.subscribe(s.heartbeat_all, cb=on_hb)
    await wait_for_value(
        lambda: _true_when({"orchestrator", "monitor", *AGENT_ROLES} <= seen),
        60,
        what="a heartbeat from every service",
    )

    expected: Counter[str] = Counter()  # subject -> dead letters expected at least

    async def stream_poison(subject: str, kind: str) -> None:
        for n, data in enumerate(poisons(kind)):
            await bus.js.publish(subject, data, headers={"Nats-Msg-Id": f"poison-{subject}-{n}"})
            expected[subject] += 1

    async def core_poison(subject: str, kind: str, readers: int) -> None:
        for data in poisons(kind):
            await bus.nc.publish(subject, data)
            expected[subject] += readers

    await stream_poison(s.task_submit("client"), "task")
    # a submission that names itself but is malformed: its sender also gets a ``rejected`` result
    named = b'{"type": "task", "message_id": "poison-named", "task": "not an object"}'
    await bus.js.publish(s.task_submit("client"), named, headers={"Nats-Msg-Id": "poison-named"})
    expected[s.task_submit("client")] += 1
    for role in AGENT_ROLES:
        for priority in PRIORITIES:
            await stream_poison(s.work(role, priority), "work")
    await stream_poison(s.step_result("developer", "task_poisoned"), "step_result")
    await stream_poison(s.metrics("developer"), "metric")
    await core_poison(s.cancel("task_poisoned"), "cancel", readers=len(AGENT_ROLES))
    await core_poison(s.heartbeat("developer", "forged-1"), "heartbeat", readers=1)
    # the broker's MaxDeliver advisory the orchestrator follows: a forged one is logged, not acted on
    # (no dead letter is asked for: only the server may publish there under the deployed permissions)
    advisory = f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{s.stream_work}.forged"
    for data in [*poisons("advisory"), b'{"stream_seq": 999999999, "deliveries": 5}']:
        await bus.nc.publish(advisory, data)
    await bus.nc.flush()

    # the request/reply subject: the sender gets an error answer at once
    for data in poisons("cancel"):
        reply = await bus.nc.request(s.task_cancel("client"), data, timeout=10)
        assert reply.headers and reply.headers.get("Nats-Service-Error-Code"), reply.data

    async def all_dead_lettered() -> list[DeadLetter] | None:
        letters = await _dead_letters(bus)
        got = Counter(d.subject for d in letters)
        return letters if all(got[subj] >= n for subj, n in expected.items()) else None

    try:
        letters = await wait_for_value(all_dead_lettered, 60, what="a dead letter for every poison message")
    except AssertionError:
        got = Counter(d.subject for d in await _dead_letters(bus))
        missing = {subj: f"{got[subj]}/{n}" for subj, n in expected.items() if got[subj] < n}
        raise AssertionError(f"poison without its dead letters (subject: got/expected): {missing}") from None
    assert all(d.reason for d in letters), "every dead letter says why"
    cancel_readers = {d.service for d in letters if d.subject == s.cancel("task_poisoned")}
    assert len(cancel_readers) == len(AGENT_ROLES), cancel_readers

    # nobody died, and the whole pipeline still works
    assert all(p.alive() for p in stack.processes), [p.name for p in stack.processes if not p.alive()]
    task = feature_task({"scores": [95]})
    await bus.publish(s.task_submit("client"), task, msg_id=task.message_id)
    result = await await_result(bus, task.task_id, timeout=90)
    assert result.status == "completed", result.reason
    rejected = await await_result(bus, "task_poison-named", timeout=30)
    assert rejected.status == "rejected" and rejected.reason
    assert all(p.alive() for p in stack.processes)
    await hb_sub.unsubscribe()


async def _true_when(value: bool) -> bool | None:
    return value or None
