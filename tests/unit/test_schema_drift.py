"""The JSON Schemas in docs/schema are generated from the msgspec types and must not drift."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec

from shared.contract.protocol import TaskBody, TaskSubmission
from shared.contract.schema import WIRE_TYPES, check_schemas, main, write_schemas

DOCS = Path(__file__).resolve().parents[2] / "docs" / "schema"


def test_docs_schemas_equal_freshly_generated_ones(tmp_path: Path) -> None:
    write_schemas(tmp_path)
    generated = sorted(p.name for p in tmp_path.glob("*.json"))
    kept = sorted(p.name for p in DOCS.glob("*.json"))
    assert kept == generated, "docs/schema has missing or stale files: run `make schema`"
    for name in generated:
        assert (DOCS / name).read_text() == (tmp_path / name).read_text(), (
            f"docs/schema/{name} drifted from shared/contract/protocol.py: run `make schema`"
        )


def test_the_check_mode_notices_an_edited_schema(tmp_path: Path) -> None:
    shutil.copytree(DOCS, tmp_path / "schema")
    assert check_schemas(tmp_path / "schema") == []
    assert main([str(tmp_path / "schema"), "--check"]) == 0
    target = tmp_path / "schema" / "TaskSubmission.json"
    data = json.loads(target.read_text())
    data["$defs"]["TaskSubmission"]["required"].append("invented_field")
    target.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    assert check_schemas(tmp_path / "schema") == ["TaskSubmission.json"]
    assert main([str(tmp_path / "schema"), "--check"]) == 1


def test_every_wire_type_has_a_schema_with_its_tag() -> None:
    for tp in WIRE_TYPES:
        schema = json.loads((DOCS / f"{tp.__name__}.json").read_text())
        body = schema["$defs"][tp.__name__]
        tag = tp.__struct_config__.tag
        assert body["properties"]["type"] == {"enum": [tag]}


def test_an_encoded_task_uses_only_fields_the_schema_documents() -> None:
    schema = json.loads((DOCS / "TaskSubmission.json").read_text())
    props = schema["$defs"]["TaskSubmission"]["properties"]
    task = TaskSubmission(message_id="m", task=TaskBody(description="d"))
    encoded = msgspec.json.decode(msgspec.json.encode(task))
    assert set(encoded) <= set(props)
    assert set(schema["$defs"]["TaskSubmission"]["required"]) <= set(encoded)
