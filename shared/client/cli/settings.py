"""Every service's settings in one object: what ``cadre up`` hands the services it starts.

``cadre up`` (and the test harness) start the whole set of services from one process;
``StackSettings`` is the union of ``AgentSettings``, ``OrchestratorSettings``,
``MonitorSettings`` and ``ClientSettings``, so the launcher forwards every
setting any child reads (``settings_env``), and the one object also serves
the clients of that deployment. A service itself never gets this type. It lives
with the command, not in ``shared/embedded`` (which never imports a service).
"""

from __future__ import annotations

from pydantic_settings import BaseSettings

from services.monitor.settings import MonitorSettings
from services.orchestrator.settings import OrchestratorSettings
from shared.agent.settings import AgentSettings, LLMSettings
from shared.bus.settings import SETTINGS_CONFIG, BusSettings
from shared.client.settings import ClientSettings

__all__ = ["StackSettings", "SETTINGS_CLASSES"]


class StackSettings(AgentSettings, OrchestratorSettings, MonitorSettings, ClientSettings):
    """The settings of every Cadre service and client, for a deployment started from one process."""

    model_config = SETTINGS_CONFIG


# Every settings class a Cadre process is built from (the launcher test round-trips each).
SETTINGS_CLASSES: tuple[type[BaseSettings], ...] = (
    BusSettings,
    LLMSettings,
    AgentSettings,
    OrchestratorSettings,
    MonitorSettings,
    ClientSettings,
    StackSettings,
)
