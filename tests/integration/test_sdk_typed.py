"""The SDK's health and status answers are typed contract values, read from real services."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest
from nats.aio.msg import Msg

from services.monitor.service import MonitorService
from services.monitor.settings import MonitorSettings
from shared.bus.core import Bus
from shared.client import CadreClient, NoService
from shared.client.cli.settings import StackSettings
from shared.contract.errors import CadreError
from shared.contract.monitoring import AgentStatus, Alert, Snapshot
from shared.contract.protocol import CancelReply, ErrorReply, encode
from shared.embedded.launcher import Stack
from tests.helpers import make_item, wait_for_value

ECHO = "tests.brains:EchoBrain"


def monitor_settings(settings: StackSettings) -> MonitorSettings:
    """The monitor's own settings, from the test's (same server, prefix and timings)."""
    return MonitorSettings(
        **{
            **settings.model_dump(include=set(MonitorSettings.model_fields)),
            "monitor_http_port": 0,
            "monitor_check_interval": 0.2,
            "monitor_discovery_interval": 0.5,
            "instance_id": "monitor-sdk",
        }
    )


async def test_the_sdk_snapshot_is_a_typed_snapshot_with_the_agents_the_monitor_sees(
    bus: Bus, stack: Stack, settings: StackSettings
) -> None:
    stack.add("developer", brain=ECHO)
    async with MonitorService(bus, monitor_settings(settings)), CadreClient.connect(settings) as client:

        async def developer_alive() -> Snapshot | None:
            snap = await client.snapshot()
            alive = any(i.instance_id == "developer-1" and i.state == "alive" for i in snap.instances)
            return snap if alive else None

        snap = await wait_for_value(
            developer_alive, 30, interval=0.2, what="developer-1 alive in the snapshot"
        )
        assert isinstance(snap, Snapshot)
        assert snap.monitor.instance_id == "monitor-sdk" and snap.monitor.ready
        assert snap.health["developer"].state == "up" and snap.health["developer"].alive == 1
        assert snap.developer.tasks_completed == 0 and snap.totals.failures == 0


async def test_the_sdk_alert_stream_yields_typed_alerts_from_the_monitor(
    bus: Bus, settings: StackSettings
) -> None:
    # no orchestrator ever beats: once the grace period (dead_after) is over, its role is down
    async with CadreClient.connect(settings) as client, client.alerts() as alerts:
        async with MonitorService(bus, monitor_settings(settings)):
            alert = await asyncio.wait_for(anext(aiter(alerts)), 30)
    assert isinstance(alert, Alert)
    assert alert.kind == "role_down" and alert.severity == "critical"
    assert alert.monitor == "monitor-sdk" and alert.instance_id is None
    assert alert.role in settings.monitor_roles


async def test_an_agents_status_endpoint_answers_a_typed_status_busy_then_idle(
    bus: Bus, stack: Stack, settings: StackSettings, tmp_path: Path
) -> None:
    hold = tmp_path / "hold"
    hold.touch()
    stack.add("developer", brain=ECHO)
    async with CadreClient.connect(settings) as client:

        async def status_when(pred, what: str) -> AgentStatus:
            async def probe() -> AgentStatus | None:
                with contextlib.suppress(NoService):  # not answering yet while it starts
                    st = await client.agent_status("developer", "developer-1", timeout=2)
                    return st if pred(st) else None
                return None

            return await wait_for_value(probe, 30, interval=0.1, what=what)

        idle = await status_when(lambda st: st.pulling, "the agent pulling")
        assert isinstance(idle, AgentStatus)
        assert idle.role == "developer" and idle.status == "idle" and idle.in_flight == []
        item = make_item(
            "developer",
            "implementation",
            "held",
            task_id="task_status",
            description="wait for the file",
            input_data={"hold_file": str(hold)},
        )
        await bus.publish(bus.subjects.work("developer", "normal"), item)
        busy = await status_when(lambda st: st.status == "busy", "the agent busy")
        assert busy.in_flight == ["task_status/held/1"]
        hold.unlink()
        done = await status_when(lambda st: st.completed == 1 and st.status == "idle", "the step done")
        assert done.failed == 0 and done.in_flight == [] and done.started_at == idle.started_at


async def test_a_service_answering_garbage_or_an_error_gives_the_sdk_caller_a_clear_error(
    bus: Bus, settings: StackSettings
) -> None:
    s = bus.subjects

    async def wrong_type(msg: Msg) -> None:  # a peer answering another family's message
        await msg.respond(encode(CancelReply(task_id="t", accepted=True)))

    async def failing(msg: Msg) -> None:  # a nats micro style error reply
        err = ErrorReply(code="internal", message="the board is on fire")
        await bus.nc.publish(
            msg.reply, encode(err), headers={"Nats-Service-Error": "boom", "Nats-Service-Error-Code": "500"}
        )

    async with CadreClient.connect(settings) as client:
        with pytest.raises(NoService, match="no monitor is answering"):
            await client.snapshot(timeout=2)
        sub = await bus.nc.subscribe(s.monitor_snapshot, cb=wrong_type)
        await bus.nc.flush()
        with pytest.raises(CadreError, match="unexpected message"):
            await client.snapshot(timeout=2)
        await sub.unsubscribe()
        sub = await bus.nc.subscribe(s.monitor_snapshot, cb=failing)
        await bus.nc.flush()
        with pytest.raises(CadreError, match="internal: the board is on fire"):
            await client.snapshot(timeout=2)
        await sub.unsubscribe()
