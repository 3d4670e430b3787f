"""Property-based fuzzing of intake: a real orchestrator process on a real nats-server.

Hypothesis builds submissions — well-formed ones with hostile values (ids
with dots, spaces and unicode, unknown task types, odd inline files, bogus
workspace refs, random ``input_data``) and ones with a field broken — and
publishes them to ``task.submit``. The property: every one either becomes a
task (its ``received`` event is stored) or is refused, which means a dead
letter holding the submission and, when it names a usable id, a ``rejected``
result for it. Nothing is silently dropped, and the orchestrator keeps running.
"""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nats.js.errors import NotFoundError

from services.orchestrator.service import task_id_for
from shared.bus.core import Bus
from shared.contract.protocol import PRIORITIES, dead_letter_decoder, task_decoder
from shared.embedded.launcher import Stack
from tests.helpers import stream_messages, wait_for_value

_counter = itertools.count()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=15,
)
ids = st.text(min_size=0, max_size=40) | st.sampled_from(["", "a.b", "a b", "*", ">", "ünï", "x" * 300])


@st.composite
def submission(draw: st.DrawFn) -> bytes:
    """One submission's bytes: a hostile-but-typed TaskSubmission, or one with a field broken."""
    unique = f"{uuid.uuid4().hex[:8]}{next(_counter)}"  # repeated ids would be (rightly) deduplicated
    input_data: dict[str, Any] = draw(st.dictionaries(st.text(max_size=10), json_values, max_size=3))
    if draw(st.booleans()):
        input_data["files"] = draw(
            st.dictionaries(st.text(min_size=1, max_size=20), st.text(max_size=50), max_size=3) | json_values
        )
    doc: dict[str, Any] = {
        "type": "task",
        "message_id": draw(ids) + unique,
        "task_id": draw(ids) + unique if draw(st.booleans()) else "",
        "task_type": draw(st.sampled_from(["feature", "research", "review"]) | st.text(max_size=12)),
        "priority": draw(st.sampled_from(PRIORITIES)),
        "context": draw(st.dictionaries(st.text(max_size=10), json_values, max_size=3)),
        "task": {
            "description": draw(st.text(max_size=200)),
            "requirements": draw(st.lists(st.text(max_size=30), max_size=3)),
            "input_data": input_data,
        },
    }
    if draw(st.booleans()):
        doc["workspace"] = {
            "name": draw(st.text(max_size=20)),
            "size": draw(st.integers()),
            "sha256": "0" * 64,
        }
    if draw(st.booleans()):  # break one field
        doc[draw(st.sampled_from(sorted(doc)))] = draw(json_values)
    return json.dumps(doc).encode()


def expected_task_id(data: bytes) -> str | None:
    """The task id the orchestrator files this submission under, when it decodes."""
    try:
        sub = task_decoder.decode(data)
    except msgspec.DecodeError:
        return None
    return task_id_for(sub.task_id, sub.message_id)


@pytest.fixture
def orchestrator(stack: Stack) -> Stack:
    stack.add("orchestrator")
    return stack


@pytest.mark.timeout(600)
@settings(
    max_examples=12,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(batch=st.lists(submission(), min_size=1, max_size=6))
async def test_every_submission_becomes_a_task_or_is_rejected_with_a_dead_letter(
    bus: Bus, orchestrator: Stack, batch: list[bytes]
) -> None:
    s = bus.subjects
    for data in batch:
        await bus.js.publish(s.task_submit("client"), data)

    async def last(subject: str) -> bytes | None:
        try:
            return (await bus.js.get_last_msg(s.stream_events, subject)).data
        except NotFoundError:
            return None

    async def outcomes() -> dict[bytes, str] | None:
        letters = await stream_messages(bus.js, s.stream_dead_letters, s.dead_letter_all, dead_letter_decoder)
        refused = {d.payload.encode() for d in letters if d.subject == s.task_submit("client")}
        found: dict[bytes, str] = {}
        for data in batch:
            task_id = expected_task_id(data)
            if data in refused:
                found[data] = "dead-lettered"
            elif task_id is not None and await last(s.events("client", task_id, "received")):
                found[data] = "accepted"
        return found if len(found) == len(batch) else None

    try:
        found = await wait_for_value(outcomes, 60, interval=0.2, what="an outcome for every submission")
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nsubmissions: {[d[:300] for d in batch]}") from None
    for data, outcome in found.items():
        task_id = expected_task_id(data)
        if outcome == "dead-lettered" and task_id is not None:
            raw = await wait_for_value(
                lambda t=task_id: last(s.result("client", t)), 30, what=f"the rejected result of {task_id}"
            )
            assert msgspec.json.decode(raw)["status"] == "rejected", raw
    assert all(p.alive() for p in orchestrator.processes), "the orchestrator died"
