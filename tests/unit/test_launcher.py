"""Child services get every setting of the process that starts them, not a hand-kept subset."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic_settings import BaseSettings

from services.monitor.settings import MonitorSettings
from services.orchestrator.settings import OrchestratorSettings
from shared.agent.settings import AgentSettings
from shared.bus.settings import BusSettings
from shared.client.cli.settings import SETTINGS_CLASSES, StackSettings
from shared.client.settings import ClientSettings
from shared.embedded.launcher import settings_env

ROOT = Path(__file__).resolve().parents[2]


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


def _all_changed(cls: type[BaseSettings]) -> BaseSettings:
    base = cls()
    return cls(**{name: _changed(name, getattr(base, name)) for name in cls.model_fields})


@pytest.mark.parametrize("cls", SETTINGS_CLASSES, ids=lambda c: c.__name__)
def test_every_field_of_every_settings_class_reaches_a_child_through_its_environment(
    cls: type[BaseSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = _all_changed(cls)
    env = settings_env(parent)
    for name in StackSettings.model_fields:
        monkeypatch.delenv(f"CADRE_{name.upper()}", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    child = cls()
    differ = {
        n: (getattr(parent, n), getattr(child, n))
        for n in cls.model_fields
        if getattr(parent, n) != getattr(child, n)
    }
    assert differ == {}
    assert len(env) == len(cls.model_fields)


def test_the_stack_settings_hold_every_field_of_every_service_with_the_same_default() -> None:
    for cls in (BusSettings, AgentSettings, OrchestratorSettings, MonitorSettings, ClientSettings):
        for name, info in cls.model_fields.items():
            assert name in StackSettings.model_fields, f"{cls.__name__}.{name} is not forwarded"
            assert StackSettings.model_fields[name].default == info.default, f"{cls.__name__}.{name}"


def test_no_settings_class_has_a_role_and_stream_replicas_are_js_replicas() -> None:
    assert "role" not in StackSettings.model_fields
    assert "replicas" not in StackSettings.model_fields
    assert "js_replicas" in BusSettings.model_fields


def test_a_service_refuses_a_knob_it_does_not_have_but_ignores_other_services_variables(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(ValueError, match="work_dir"):
        MonitorSettings(work_dir=Path("/tmp/w"))  # type: ignore[call-arg]
    monkeypatch.setenv("CADRE_WORK_DIR", "/tmp/w")
    monkeypatch.setenv("CADRE_STEP_DEADLINE", "5")
    assert "work_dir" not in MonitorSettings().model_dump()


def test_an_override_that_is_not_a_setting_is_refused() -> None:
    with pytest.raises(ValueError, match="monitor_prot"):
        settings_env(StackSettings(), monitor_prot=1)


def test_a_child_service_reads_a_changed_setting_of_its_own_type_from_the_launcher_environment(
    tmp_path: Path,
) -> None:
    """Through a real child interpreter: what the launcher hands on is what each service class reads."""
    parent = StackSettings(
        work_dir=tmp_path / "w", step_deadline=12.5, monitor_roles=["a", "b"], client_name="carol"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADRE_")}
    env.update(settings_env(parent), PYTHONPATH=str(ROOT))
    script = (
        "from shared.agent.settings import AgentSettings as A\n"
        "from services.orchestrator.settings import OrchestratorSettings as O\n"
        "from services.monitor.settings import MonitorSettings as M\n"
        "from shared.client.settings import ClientSettings as C\n"
        "print(A().work_dir, O().step_deadline, ','.join(M().monitor_roles), C().upload_name())\n"
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.split() == [str(tmp_path / "w"), "12.5", "a,b", "carol"]
