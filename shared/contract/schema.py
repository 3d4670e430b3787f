"""JSON Schemas of the wire messages, generated from the msgspec types.

``python -m shared.contract.schema docs/schema`` writes one ``<Type>.json`` per
message a non-Python client meets (every type of every family in
``shared.contract.registry``); ``--check`` only compares and exits 1
when the files on disk drifted from the code. The output is deterministic
(sorted keys), so the files can be kept in git and diffed.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from pathlib import Path
from typing import Any

import msgspec

from shared.contract.protocol import PROTOCOL_VERSION
from shared.contract.registry import wire_types

__all__ = ["WIRE_TYPES", "schema_for", "render", "write_schemas", "check_schemas", "main"]

# every message some subject family carries (shared/contract/registry.py is the list)
WIRE_TYPES: tuple[type[msgspec.Struct], ...] = wire_types()

_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _normalise(node: Any) -> Any:
    """The schema in one canonical form, whatever msgspec release rendered it.

    Every ``description`` (a docstring) in ``inspect.cleandoc`` form (0.23 keeps the
    indentation), and the alternatives of an ``anyOf`` in a fixed order (releases differ on
    where ``null`` goes; the order means nothing). The files in git are our contract, not a
    library's formatting choices.
    """
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            if k == "description" and isinstance(v, str):
                out[k] = inspect.cleandoc(v)
            elif k == "anyOf" and isinstance(v, list):
                out[k] = sorted((_normalise(x) for x in v), key=lambda x: json.dumps(x, sort_keys=True))
            else:
                out[k] = _normalise(v)
        return out
    if isinstance(node, list):
        return [_normalise(v) for v in node]
    return node


def schema_for(tp: type[msgspec.Struct]) -> dict[str, Any]:
    """The JSON Schema of one message type (with its nested types under ``$defs``)."""
    schema = _normalise(msgspec.json.schema(tp))
    return {
        "$schema": _DIALECT,
        "$id": f"cadre/v{PROTOCOL_VERSION}/{tp.__name__}.json",
        "title": tp.__name__,
        **schema,
    }


def render(tp: type[msgspec.Struct]) -> str:
    """The file content for one type: stable key order, trailing newline."""
    return json.dumps(schema_for(tp), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_schemas(out_dir: Path) -> list[Path]:
    """Write every wire type's schema into ``out_dir``; returns the paths written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for tp in WIRE_TYPES:
        path = out_dir / f"{tp.__name__}.json"
        path.write_text(render(tp), encoding="utf-8")
        written.append(path)
    return written


def check_schemas(out_dir: Path) -> list[str]:
    """Names of the schema files in ``out_dir`` that are missing or differ from the code."""
    return [
        f"{tp.__name__}.json"
        for tp in WIRE_TYPES
        if not (out_dir / f"{tp.__name__}.json").is_file()
        or (out_dir / f"{tp.__name__}.json").read_text(encoding="utf-8") != render(tp)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m shared.contract.schema", description=__doc__)
    parser.add_argument("out_dir", type=Path, nargs="?", default=Path("docs/schema"))
    parser.add_argument("--check", action="store_true", help="compare only; exit 1 on drift")
    args = parser.parse_args(argv)
    if args.check:
        stale = check_schemas(args.out_dir)
        for name in stale:
            print(f"schema drift: {args.out_dir / name} (run `make schema`)", file=sys.stderr)
        return 1 if stale else 0
    for path in write_schemas(args.out_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
