"""Child services get every setting of the process that starts them, not a hand-kept subset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from shared.bus.settings import Settings
from shared.embedded.launcher import settings_env


def _changed(name: str, value: Any) -> Any:
    """A valid value for the field that differs from ``value``."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int | float):
        return value + 7
    if isinstance(value, Path) or name.endswith(("_file", "_ca")):
        return Path(f"/tmp/cadre-{name}")
    if name == "planner":
        return "llm"
    if name == "prefix":
        return "other"
    if name == "conflict_policy":
        return ["style", "security", "correctness", "performance"]
    if isinstance(value, list):
        return [*value, "extra"] if name == "monitor_roles" else [Path("/tmp/a"), Path("/tmp/b")]
    return f"{value or 'x'}-changed"


def test_every_setting_reaches_a_child_service_through_its_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    base = Settings()
    values = {name: _changed(name, getattr(base, name)) for name in Settings.model_fields}
    parent = Settings(**values)
    env = settings_env(parent)
    for name in Settings.model_fields:
        monkeypatch.delenv(f"CADRE_{name.upper()}", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    child = Settings()
    differ = {
        n: (getattr(parent, n), getattr(child, n))
        for n in Settings.model_fields
        if getattr(parent, n) != getattr(child, n)
    }
    assert differ == {}
    assert len(env) == len(Settings.model_fields)


def test_an_override_that_is_not_a_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="monitor_prot"):
        settings_env(Settings(), monitor_prot=1)
