"""Property-based fuzzing of every typed decoder of the contract (shared/contract/registry.py).

Whatever bytes arrive on a subject, its decoder gives a value of its type or
raises msgspec's ``DecodeError`` / ``ValidationError`` (what every consumer
catches) — never anything else. Three kinds of input: random bytes, random
JSON documents, and valid messages with one field replaced, dropped or added
(the shape a buggy or hostile sender produces).
"""

from __future__ import annotations

import json
from typing import Any

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from shared.contract.registry import FAMILIES

DECODERS = {f.name: f.decoder for f in FAMILIES}

_USAGE = {"prompt_tokens": 0, "completion_tokens": 0, "requests": 0, "cost_usd": 0.0}
SNAPSHOT: dict[str, Any] = {
    "type": "snapshot",
    "orchestrator": {
        "tasks_delegated": 0,
        "avg_decomposition_time": None,
        "conflict_resolutions": 0,
        "avg_decomposition_time_s": None,
        "tasks_decomposed": 0,
        "retries": 0,
        "reassignments": 0,
        "usage": _USAGE,
    },
    "researcher": {
        "tasks_completed": 0,
        "avg_research_time": None,
        "accuracy_score": None,
        "avg_research_time_s": None,
        "accuracy_note": "n",
        "failures": 0,
        "usage": _USAGE,
    },
    "developer": {
        "tasks_completed": 0,
        "avg_coding_time": None,
        "first_approval_rate": None,
        "avg_coding_time_s": None,
        "first_round_reviews": 0,
        "failures": 0,
        "usage": _USAGE,
    },
    "reviewer": {
        "tasks_completed": 0,
        "avg_review_time": None,
        "issues_found_per_task": None,
        "avg_review_time_s": None,
        "issues_found": 0,
        "avg_review_score": None,
        "failures": 0,
        "usage": _USAGE,
    },
    "totals": {
        "tasks_finished": 0,
        "tasks_completed": 0,
        "tasks_failed": 0,
        "steps_completed": 0,
        "failures": 0,
        "retries": 0,
        "reassignments": 0,
        "usage": _USAGE,
        "events_folded": 0,
        "ignored_events": 0,
        "last_event_at": None,
    },
    "health": {"developer": {"state": "up", "alive": 1, "suspect": 0, "dead": 0}},
    "instances": [],
    "alerts": [],
    "recent_tasks": [],
    "services": [],
    "monitor": {
        "instance_id": "m1",
        "started_at": 1.0,
        "ready": True,
        "replayed_events": 0,
        "http_url": None,
        "suspect_after": 5.0,
        "dead_after": 10.0,
    },
    "generated_at": 1.0,
}

# a minimal valid document per decoder: the tag and the required fields
VALID: dict[str, dict[str, Any]] = {
    "task": {"type": "task", "message_id": "m1", "task": {"description": "d"}},
    "work": {
        "type": "work",
        "message_id": "m1",
        "to_agent": "developer",
        "task_type": "implementation",
        "task": {"description": "d"},
        "task_id": "t1",
        "step_id": "s1",
        "deadline": 1.0,
        "created_at": 1.0,
    },
    "step": {
        "type": "step_result",
        "message_id": "m1",
        "task_id": "t1",
        "step_id": "s1",
        "attempt": 1,
        "role": "reviewer",
        "instance_id": "i1",
        "status": "completed",
        "output": {"type": "review", "summary": "s", "score": 90, "verdict": "approved"},
        "timings": {"queued_at": 1.0, "started_at": 1.0, "finished_at": 2.0},
    },
    "event": {"type": "event", "task_id": "t1", "kind": "received", "text": "x", "at": 1.0},
    "result": {"type": "result", "task_id": "t1", "status": "completed", "approved": True},
    "heartbeat": {
        "type": "heartbeat",
        "role": "developer",
        "instance_id": "i1",
        "at": 1.0,
        "started_at": 1.0,
    },
    "metric": {
        "type": "metric",
        "kind": "step_completed",
        "role": "developer",
        "instance_id": "i1",
        "at": 1.0,
    },
    "dead_letter": {
        "type": "dead_letter",
        "service": "s",
        "subject": "x",
        "reason": "r",
        "payload": "p",
        "received_at": 1.0,
    },
    "cancel": {"type": "cancel", "task_id": "t1"},
    "cancel_reply": {"type": "cancel_reply", "task_id": "t1", "accepted": True},
    "error": {"type": "error", "code": "500", "message": "m"},
    "alert": {
        "type": "alert",
        "alert_id": "a1",
        "kind": "role_down",
        "severity": "critical",
        "role": "developer",
        "text": "role developer has no live instance",
        "at": 1.0,
    },
    "agent_status": {
        "type": "agent_status",
        "role": "developer",
        "instance_id": "i1",
        "status": "idle",
        "pulling": True,
    },
    "snapshot": SNAPSHOT,
}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5),
    max_leaves=30,
)

PROPERTY = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def decodes_or_refuses(name: str, data: bytes) -> None:
    """The property: a typed value, or msgspec's DecodeError (ValidationError is one)."""
    decoder = DECODERS[name]
    try:
        value = decoder.decode(data)
    except msgspec.DecodeError:
        return
    assert isinstance(value, decoder.type if isinstance(decoder.type, type) else msgspec.Struct)


def test_every_decoder_of_the_protocol_has_a_valid_example_that_decodes() -> None:
    assert set(DECODERS) == set(VALID), "a new decoder needs an example here"
    for name, doc in VALID.items():
        assert isinstance(DECODERS[name].decode(json.dumps(doc).encode()), msgspec.Struct), name


@pytest.mark.parametrize("name", sorted(VALID))
@PROPERTY
@given(data=st.binary(max_size=300))
def test_random_bytes_give_a_typed_value_or_a_decode_error(name: str, data: bytes) -> None:
    decodes_or_refuses(name, data)


@pytest.mark.parametrize("name", sorted(VALID))
@PROPERTY
@given(doc=json_values)
def test_random_json_gives_a_typed_value_or_a_decode_error(name: str, doc: Any) -> None:
    decodes_or_refuses(name, json.dumps(doc).encode())


@st.composite
def mutated(draw: st.DrawFn, name: str) -> bytes:
    """A valid document with one field (top level or nested one level) replaced, dropped or added."""
    doc = json.loads(json.dumps(VALID[name]))
    target = doc
    nested = [k for k, v in doc.items() if isinstance(v, dict)]
    if nested and draw(st.booleans()):
        target = doc[draw(st.sampled_from(nested))]
    action = draw(st.sampled_from(["replace", "drop", "add"]))
    keys = sorted(target)
    if action == "replace" and keys:
        target[draw(st.sampled_from(keys))] = draw(json_values)
    elif action == "drop" and keys:
        target.pop(draw(st.sampled_from(keys)))
    else:
        target[draw(st.text(max_size=12))] = draw(json_values)
    return json.dumps(doc).encode()


@pytest.mark.parametrize("name", sorted(VALID))
@PROPERTY
@given(data=st.data())
def test_a_valid_message_with_one_field_mutated_gives_a_typed_value_or_a_decode_error(
    name: str, data: st.DataObject
) -> None:
    decodes_or_refuses(name, data.draw(mutated(name)))


def nested(name: str, depth: int, opener: str) -> list[bytes]:
    """``depth`` levels of arrays or objects: alone, and as an unknown field of a valid message."""
    deep = "[" * depth + "]" * depth if opener == "[" else '{"a":' * depth + "1" + "}" * depth
    doc = json.dumps(VALID[name])
    return [deep.encode(), (doc[:-1] + f', "nested": {deep}' + "}").encode()]


@pytest.mark.parametrize("name", sorted(VALID))
@settings(max_examples=20, deadline=None)
@given(depth=st.integers(min_value=1, max_value=400), opener=st.sampled_from(["[", "{"]))
def test_nested_json_gives_a_typed_value_or_a_decode_error(name: str, depth: int, opener: str) -> None:
    for data in nested(name, depth, opener):
        decodes_or_refuses(name, data)


@pytest.mark.parametrize("name", sorted(VALID))
def test_json_nested_ten_thousand_deep_is_a_decode_error_not_a_recursion_error(name: str) -> None:
    for data in nested(name, 10_000, "["):
        decodes_or_refuses(name, data)
