"""Every ``CADRE_*`` variable docker-compose.yml hands a service is a setting that service reads.

Runs without a container engine: it reads the compose file (``tests/deploy/`` runs it for real).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings

from services.monitor.settings import MonitorSettings
from services.orchestrator.settings import OrchestratorSettings
from shared.agent.settings import AgentSettings
from shared.bus.settings import BusSettings
from shared.client.settings import ClientSettings

ROOT = Path(__file__).resolve().parents[2]

# the compose service -> the settings class its process is built from
SERVICE_SETTINGS: dict[str, type[BaseSettings]] = {
    "bootstrap": BusSettings,
    "orchestrator": OrchestratorSettings,
    "researcher": AgentSettings,
    "developer": AgentSettings,
    "reviewer": AgentSettings,
    "monitor": MonitorSettings,
    "client": ClientSettings,
    "operator": ClientSettings,  # the CLI as the operator (cadre status)
}


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


@pytest.mark.parametrize("service", sorted(SERVICE_SETTINGS))
def test_each_cadre_variable_compose_hands_a_service_is_one_of_its_settings(service: str) -> None:
    env = _compose()["services"][service]["environment"]
    names = {k for k in env if k.startswith("CADRE_")}
    assert names, f"compose hands {service} no CADRE_* settings"
    fields = SERVICE_SETTINGS[service].model_fields
    unknown = sorted(n for n in names if n.removeprefix("CADRE_").lower() not in fields)
    assert unknown == [], f"{service} gets variables it does not read: {unknown}"


def test_stream_replicas_reach_the_services_as_js_replicas_and_replicas_count_containers() -> None:
    services = _compose()["services"]
    for name in SERVICE_SETTINGS:
        env = services[name]["environment"]
        assert "CADRE_REPLICAS" not in env, f"{name} still gets CADRE_REPLICAS"
    assert services["bootstrap"]["environment"]["CADRE_JS_REPLICAS"] == "${CADRE_JS_REPLICAS:-1}"
    for agent in ("researcher", "developer", "reviewer"):
        assert services[agent]["deploy"]["replicas"] == "${CADRE_REPLICAS:-2}"
