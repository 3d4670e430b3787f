"""What the monitor is configured by: its HTTP endpoint and how it judges health.

Extends ``BusSettings`` (which holds ``dead_after`` and ``monitor_forget_after``:
the orchestrator judges instances by them too). Same ``CADRE_*`` names as ever.
"""

from __future__ import annotations

from pydantic import Field

from shared.bus.settings import SETTINGS_CONFIG, BusSettings, CommaList

__all__ = ["MonitorSettings"]


class MonitorSettings(BusSettings):
    """One monitor instance."""

    model_config = SETTINGS_CONFIG

    monitor_http_host: str = Field(
        "127.0.0.1", description="where the dashboard, /status and /metrics listen"
    )
    monitor_http_port: int = Field(8080, description="their port (0: any free port)")
    monitor_http_port_fallback: bool = Field(
        False,
        description="when monitor_http_port is taken, bind a free port instead"
        " (cadre up turns this on unless the port was set explicitly)",
    )
    suspect_after: float = Field(2.5, description="an instance silent this long is suspect (s)")
    monitor_check_interval: float = Field(0.5, description="how often health is re-evaluated (s)")
    monitor_discovery_interval: float = Field(10.0, description="how often $SRV.INFO/STATS is asked (s)")
    monitor_stall_interval: float = Field(
        2.0, description="how often each role's pending work is compared with its pulling instances (s)"
    )
    monitor_roles: CommaList[str] = Field(
        ["orchestrator", "researcher", "developer", "reviewer"],
        description="roles that must have a live instance (a,b,...)",
    )
    monitor_recent_tasks: int = Field(20, description="recent tasks the snapshot lists")
    monitor_recent_alerts: int = Field(50, description="recent alerts the snapshot lists")
    monitor_replay_timeout: float = Field(60.0, description="bound on the start-up metric replay (s)")
