"""The registry of subject families: which subject carries which wire type, decoded by which decoder.

One entry per family of subjects (or request/reply endpoint). It is the single list that
``shared.contract.schema`` turns into ``docs/schema/*.json`` and that a unit test walks:
a message type defined in the contract but reachable from no family, or a decoder that is
not registered here, fails the test, so a new wire type cannot ship without a schema.
``docs/wire-protocol.md`` is the prose version of this table.
"""

from __future__ import annotations

import types
import typing
from dataclasses import dataclass
from typing import Any, Literal

import msgspec

from shared.contract.monitoring import agent_status_decoder, alert_decoder, snapshot_decoder
from shared.contract.protocol import (
    BoundedDecoder,
    cancel_decoder,
    cancel_reply_decoder,
    dead_letter_decoder,
    error_decoder,
    event_decoder,
    heartbeat_decoder,
    metric_decoder,
    result_decoder,
    step_decoder,
    task_decoder,
    work_decoder,
)

__all__ = ["Transport", "Family", "FAMILIES", "family", "members", "wire_types"]

# how a family travels: a JetStream stream, core NATS publish, or request/reply
Transport = Literal["jetstream", "core", "request", "reply"]


@dataclass(frozen=True)
class Family:
    """One family of subjects and the one typed decoder that reads every message on it."""

    name: str
    subject: str  # the pattern, with ``<prefix>`` and ``<token>`` placeholders
    transport: Transport
    decoder: BoundedDecoder[Any]
    note: str = ""


FAMILIES: tuple[Family, ...] = (
    Family("task", "<prefix>.task.submit", "jetstream", task_decoder, "a user's task (stream TASKS)"),
    Family("work", "<prefix>.work.<role>.<priority>", "jetstream", work_decoder, "orchestrator → agent"),
    Family(
        "step",
        "<prefix>.step.result.<role>.<task_id>",
        "jetstream",
        step_decoder,
        "agent → orchestrator: StepStarted, then StepResult",
    ),
    Family("event", "<prefix>.events.<task_id>.<kind>", "jetstream", event_decoder, "a task's trace"),
    Family(
        "result",
        "<prefix>.result.<task_id> · <prefix>.refused.<message_id>",
        "jetstream",
        result_decoder,
        "the final result, or a refusal of one submission",
    ),
    Family("heartbeat", "<prefix>.heartbeat.<role>.<instance_id>", "core", heartbeat_decoder),
    Family("metric", "<prefix>.metrics.<role>", "core", metric_decoder, "also stored in stream METRICS"),
    Family("alert", "<prefix>.alert.<kind>", "core", alert_decoder, "the monitor's health changes"),
    Family("dead_letter", "<prefix>.deadletter.<service>", "jetstream", dead_letter_decoder),
    Family(
        "cancel",
        "<prefix>.task.cancel · <prefix>.control.cancel.<task_id>",
        "request",
        cancel_decoder,
        "a client asks the orchestrator; the orchestrator tells the agents (core)",
    ),
    Family("cancel_reply", "reply to <prefix>.task.cancel", "reply", cancel_reply_decoder),
    Family("snapshot", "reply to <prefix>.monitor.snapshot · HTTP /status", "reply", snapshot_decoder),
    Family(
        "agent_status", "reply to <prefix>.svc.<role>.<instance_id>.status", "reply", agent_status_decoder
    ),
    Family(
        "error",
        "reply to any request above, with header Nats-Service-Error",
        "reply",
        error_decoder,
        "a request that failed: the code and message",
    ),
)


def family(name: str) -> Family:
    """The family called ``name`` (``KeyError`` for an unknown one)."""
    for f in FAMILIES:
        if f.name == name:
            return f
    raise KeyError(name)


def members(tp: Any) -> tuple[type[msgspec.Struct], ...]:
    """The Struct types a decoder type stands for: itself, or each member of a union."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        return tuple(m for arg in typing.get_args(tp) for m in members(arg))
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return (tp,)
    return ()


def wire_types() -> tuple[type[msgspec.Struct], ...]:
    """Every top-level message type some family carries, once each, in registry order."""
    seen: dict[type[msgspec.Struct], None] = {}
    for f in FAMILIES:
        for tp in members(f.decoder.type):
            seen.setdefault(tp, None)
    return tuple(seen)
