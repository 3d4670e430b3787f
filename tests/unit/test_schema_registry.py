"""Every wire type is reachable from a subject family and has a schema file: none can be forgotten.

The walk imports every module of ``shared`` and ``services`` and collects each
``Message`` subclass (a tagged, versioned message) and each module-level
``BoundedDecoder``; all must be registered in ``shared.contract.registry``, whose
types are the ones ``make schema`` writes to ``docs/schema``.
"""

from __future__ import annotations

import ast
import importlib
import json
import pkgutil
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

import msgspec
import pytest

import services
import shared
from shared.contract.protocol import BoundedDecoder, Message
from shared.contract.registry import FAMILIES, family, members, wire_types
from shared.contract.schema import WIRE_TYPES

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schema"
OURS = ("shared.", "services.")


def all_modules() -> list[ModuleType]:
    """Every module of the two packages (``__main__`` modules only wire a process: skipped)."""
    found = []
    for pkg in (shared, services):
        for info in pkgutil.walk_packages(pkg.__path__, prefix=f"{pkg.__name__}."):
            if info.name.rsplit(".", 1)[-1] != "__main__":
                found.append(importlib.import_module(info.name))
    return found


def message_types(prefixes: Iterable[str] = OURS) -> set[type[msgspec.Struct]]:
    """Every concrete subclass of ``Message`` defined in a module under ``prefixes``."""
    out: set[type[msgspec.Struct]] = set()
    todo: list[type[msgspec.Struct]] = list(Message.__subclasses__())
    while todo:
        tp = todo.pop()
        todo.extend(tp.__subclasses__())
        if tp.__module__.startswith(tuple(prefixes)):
            out.add(tp)
    return out


def unregistered(types: Iterable[type[msgspec.Struct]]) -> list[str]:
    carried = set(wire_types())
    return sorted(f"{tp.__module__}.{tp.__name__}" for tp in types if tp not in carried)


@pytest.fixture(scope="module")
def modules() -> list[ModuleType]:
    return all_modules()


def test_every_message_type_anywhere_in_the_code_is_carried_by_a_registered_family(
    modules: list[ModuleType],
) -> None:
    assert len(message_types()) >= 15
    assert unregistered(message_types()) == [], (
        "a Message subclass no subject family carries: add it to shared/contract/registry.py "
        "and run `make schema`"
    )


def test_the_walk_notices_a_message_type_nobody_registered() -> None:
    class Undeclared(Message, frozen=True, kw_only=True, tag="undeclared"):
        note: str = ""

    assert unregistered(message_types(prefixes=(__name__,))) == [f"{__name__}.Undeclared"]


def test_every_module_level_bounded_decoder_is_a_registered_family(modules: list[ModuleType]) -> None:
    registered = {id(f.decoder) for f in FAMILIES}
    loose = [
        f"{m.__name__}.{name}"
        for m in modules
        if m.__name__.startswith("shared.contract.")
        for name, value in vars(m).items()
        if isinstance(value, BoundedDecoder) and id(value) not in registered
    ]
    assert loose == [], (
        "a contract decoder outside the registry: add its family to shared/contract/registry.py"
    )


def test_every_wire_type_has_a_schema_file_naming_it() -> None:
    missing = [tp.__name__ for tp in WIRE_TYPES if not (DOCS / f"{tp.__name__}.json").is_file()]
    assert missing == [], "run `make schema`"
    for tp in WIRE_TYPES:
        schema = json.loads((DOCS / f"{tp.__name__}.json").read_text())
        assert schema["title"] == tp.__name__ and tp.__name__ in schema["$defs"]


def test_the_types_once_left_out_now_have_schemas() -> None:
    names = {tp.__name__ for tp in WIRE_TYPES}
    assert {"StepStarted", "Alert", "Snapshot", "ErrorReply", "AgentStatus"} <= names


def test_family_names_are_unique_and_each_decoder_reads_only_messages() -> None:
    names = [f.name for f in FAMILIES]
    assert len(names) == len(set(names))
    for f in FAMILIES:
        assert members(f.decoder.type), f.name
        assert all(issubclass(tp, Message) for tp in members(f.decoder.type)), f.name
    assert members(family("step").decoder.type) == tuple(
        tp for tp in WIRE_TYPES if tp.__name__ in ("StepStarted", "StepResult")
    )
    with pytest.raises(KeyError):
        family("nonexistent")


def test_every_family_decodes_what_its_own_type_encodes_and_refuses_another_familys_message() -> None:
    from shared.contract.protocol import CancelRequest, ErrorReply, encode

    cancel = encode(CancelRequest(task_id="t1"))
    assert family("cancel").decoder.decode(cancel) == CancelRequest(task_id="t1")
    with pytest.raises(msgspec.ValidationError):
        family("error").decoder.decode(cancel)
    assert family("error").decoder.decode(encode(ErrorReply(code="500", message="m"))).message == "m"


def _strings(node: ast.AST) -> set[str]:
    """The string values an expression can take: a constant, or either branch of ``a if c else b``."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return _strings(node.body) | _strings(node.orelse)
    return set()


def _sent_kinds() -> tuple[set[str], set[str]]:
    """The string kinds the code passes to ``emit.event``/``emit.metric``, ``TaskEvent``/``MetricEvent``."""
    events: set[str] = set()
    metrics: set[str] = set()
    root = DOCS.parents[1]
    for path in [*(root / "services").rglob("*.py"), *(root / "shared").rglob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call):
                continue
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            found: list[ast.AST] = []
            if name in ("event", "metric") and len(node.args) >= 2:
                found = [node.args[1]]
            elif name in ("TaskEvent", "MetricEvent"):
                found = [k.value for k in node.keywords if k.arg == "kind"]
            into = events if name in ("event", "TaskEvent") else metrics
            for arg in found:
                into |= _strings(arg)
    return events, metrics


def test_every_event_and_metric_kind_the_code_sends_is_one_the_contract_lists() -> None:
    from shared.contract.protocol import EVENT_KINDS, FINAL_EVENT_KINDS, METRIC_KINDS

    events, metrics = _sent_kinds()
    assert len(events) >= 12 and len(metrics) >= 6, "the scan found too little to mean anything"
    assert events - set(EVENT_KINDS) == set(), (
        "add the new event kind to EventKind in shared/contract/protocol.py"
    )
    assert metrics - set(METRIC_KINDS) == set(), "add the new metric kind to MetricKind"
    assert set(FINAL_EVENT_KINDS) <= set(EVENT_KINDS)
