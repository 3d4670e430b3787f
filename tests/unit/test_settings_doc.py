"""docs/deployment.md lists every setting of every service as the classes define it."""

from __future__ import annotations

from pathlib import Path

from shared.client.cli.settings import StackSettings
from shared.client.cli.settings_doc import rewrite, settings_tables

DOC = Path(__file__).resolve().parents[2] / "docs" / "deployment.md"


def test_the_deployment_guide_holds_the_settings_tables_the_classes_generate() -> None:
    text = DOC.read_text(encoding="utf-8")
    assert rewrite(text) == text, "docs/deployment.md is out of date: run make settings-doc"


def test_every_setting_appears_in_the_tables_with_what_it_does() -> None:
    rows = [line for line in settings_tables().splitlines() if line.startswith("| `CADRE_")]
    listed = {row.split("`")[1] for row in rows}
    assert listed == {f"CADRE_{name.upper()}" for name in StackSettings.model_fields}
    assert [row for row in rows if row.rstrip().endswith("|  |")] == []  # every row says what it is for
