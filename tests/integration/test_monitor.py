"""The monitor against a real nats-server, real service processes and a real headless Chromium."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import aiohttp
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from services.monitor.figures import ACCURACY_UNAVAILABLE
from services.monitor.service import MonitorService
from services.monitor.settings import MonitorSettings
from shared.bus.core import Bus
from shared.client.cli.settings import StackSettings
from shared.contract.monitoring import Alert, Snapshot, alert_decoder, snapshot_decoder
from shared.contract.protocol import (
    MetricEvent,
    TaskBody,
    WorkItem,
    metric_decoder,
    new_id,
    now,
)
from shared.embedded.launcher import Stack
from tests.helpers import await_result, feature_task, stream_messages, task_events, wait_for_value

ECHO = "tests.brains:EchoBrain"
SCRIPTED = "tests.brains:ScriptedBrain"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


# --- helpers -------------------------------------------------------------------------------------------
def monitor_settings(settings: StackSettings, **extra: Any) -> MonitorSettings:
    """The monitor's own settings, from the test's (same server, prefix and timings)."""
    values = {
        **settings.model_dump(include=set(MonitorSettings.model_fields)),
        "monitor_http_port": 0,
        "monitor_check_interval": 0.2,
        "monitor_discovery_interval": 0.5,
        "instance_id": "monitor-test",
        **extra,
    }
    return MonitorSettings(**values)


async def request_snapshot(bus: Bus) -> Snapshot:
    reply = await bus.nc.request(bus.subjects.monitor_snapshot, b"", timeout=3)
    return snapshot_decoder.decode(reply.data)


async def snapshot_when(bus: Bus, pred, what: str, timeout: float = 30.0) -> Snapshot:
    async def probe() -> Snapshot | None:
        with contextlib.suppress(Exception):  # no responder yet while a monitor (re)starts
            snap = await request_snapshot(bus)
            return snap if pred(snap) else None
        return None

    return await wait_for_value(probe, timeout, interval=0.1, what=what)


def figures_of(snap: Snapshot) -> dict[str, Any]:
    """What a restart must reproduce: the spec's role objects, totals and recent tasks."""
    data = msgspec.to_builtins(snap)
    return {
        k: data[k] for k in ("orchestrator", "researcher", "developer", "reviewer", "totals", "recent_tasks")
    }


class AlertFeed:
    """Every alert published on <prefix>.alert.>, with its arrival time."""

    def __init__(self) -> None:
        self.alerts: list[tuple[float, Alert]] = []

    async def start(self, bus: Bus) -> AlertFeed:
        async def on(msg) -> None:
            self.alerts.append((time.monotonic(), alert_decoder.decode(msg.data)))

        await bus.nc.subscribe(bus.subjects.alert_all, cb=on)
        return self

    async def wait(self, kind: str, instance: str | None = None, role: str | None = None, after: float = 0.0):
        def match() -> tuple[float, Alert] | None:
            for at, a in self.alerts:
                if a.kind == kind and at >= after and (instance is None or a.instance_id == instance):
                    if role is None or a.role == role:
                        return at, a
            return None

        async def probe():
            return match()

        return await wait_for_value(probe, 30, what=f"a {kind} alert for {instance or role}")


async def run_spec_task(bus: Bus, script: dict[str, Any]):
    task = feature_task(script)
    await bus.publish(bus.subjects.task_submit("client"), task, msg_id=task.message_id)
    result = await await_result(bus, task.task_id, timeout=90)
    assert result.status == "completed", result.reason
    return result


def echo_item(role: str, step: str, task_id: str = "task_mon") -> WorkItem:
    return WorkItem(
        message_id=new_id("msg"),
        to_agent=role,
        task_type="implementation",
        task=TaskBody(description=f"do {step}"),
        task_id=task_id,
        step_id=step,
        deadline=now() + 60,
        created_at=now(),
    )


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def approx(x: float):
    """The snapshot rounds seconds to microseconds."""
    return pytest.approx(x, abs=1e-6)


# --- the spec's example, with the monitor as a process -------------------------------------------------
async def test_the_spec_example_yields_figures_that_match_what_happened_and_survive_a_monitor_restart(
    bus: Bus, stack: Stack
) -> None:
    monitor = stack.add("monitor", monitor_http_port=0, monitor_discovery_interval=0.5)
    stack.add("orchestrator")
    for role in ("researcher", "developer", "reviewer"):
        stack.add(role, brain=SCRIPTED)
    result = await run_spec_task(bus, {"scores": [85, 98], "dispute": True})

    # what happened, from the task's own record (final result + events), not from the monitor
    events = await task_events(bus, result.task_id)
    by_role = {
        r: [s for s in result.steps if s.role == r and s.status == "completed"]
        for r in ("researcher", "developer", "reviewer")
    }
    first_round = [s for s in by_role["reviewer"] if ".review" not in s.step_id]
    first_round_approved = [
        s for s in first_round if (s.score or 0) >= 90 and not any(i.severity == "HIGH" for i in s.issues)
    ]
    metrics = await stream_messages(
        bus.js, bus.subjects.stream_metrics, bus.subjects.metrics_all, metric_decoder
    )
    decomposed = [m.duration_s for m in metrics if m.kind == "decomposed"]

    snap = await snapshot_when(
        bus,
        lambda s: (
            s.totals.tasks_finished == 1
            and s.totals.events_folded == len(metrics)
            and "developer-1" in {i.instance_id for i in s.instances}
        ),
        "the monitor to fold every metric of the task and see the developer",
    )
    o, res, dev, rev = snap.orchestrator, snap.researcher, snap.developer, snap.reviewer
    assert o.tasks_delegated == sum(1 for e in events if e.kind == "delegated") >= 8
    assert o.conflict_resolutions == len(result.conflicts) == 1
    assert o.avg_decomposition_time_s == round(decomposed[0], 6) and o.avg_decomposition_time.endswith(
        ("s", "ms")
    )
    assert res.tasks_completed == len(by_role["researcher"]) == 1
    assert res.avg_research_time_s == approx(mean([s.duration_s for s in by_role["researcher"]]))
    assert res.accuracy_score is None and res.accuracy_note == ACCURACY_UNAVAILABLE
    # implement, tests, the fix (and a must-fix after the dispute), performance
    assert dev.tasks_completed == len(by_role["developer"]) >= 4
    assert dev.avg_coding_time_s == approx(mean([s.duration_s for s in by_role["developer"]]))
    assert dev.first_approval_rate == round(len(first_round_approved) / len(first_round), 3) < 1
    assert rev.tasks_completed == len(by_role["reviewer"]) == 3
    assert rev.avg_review_time_s == approx(mean([s.duration_s for s in by_role["reviewer"]]))
    issues = sum(len(s.issues) for s in by_role["reviewer"])
    assert rev.issues_found == issues and rev.issues_found_per_task == round(issues / 3, 3)
    assert snap.totals.tasks_completed == 1 and snap.totals.failures == 0
    (task,) = [t for t in snap.recent_tasks if t.task_id == result.task_id]
    assert task.status == "completed" and task.delegated == o.tasks_delegated

    # the same snapshot over HTTP, and /metrics in Prometheus text format
    url = snap.monitor.http_url
    assert url and url.startswith("http://127.0.0.1:")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/status") as r:
            assert r.status == 200 and r.content_type == "application/json"
            over_http = snapshot_decoder.decode(await r.read())
        async with http.get(f"{url}/metrics") as r:
            assert r.status == 200
            text = await r.text()
    assert figures_of(over_http) == figures_of(snap)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    value = {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families.values() for s in f.samples}
    assert value[("cadre_tasks_delegated_total", ())] == o.tasks_delegated
    assert value[("cadre_conflict_resolutions_total", ())] == 1
    assert value[("cadre_steps_completed_total", (("role", "developer"),))] == dev.tasks_completed
    assert value[("cadre_first_approval_rate", ())] == dev.first_approval_rate
    assert value[("cadre_step_seconds_avg", (("role", "reviewer"),))] == rev.avg_review_time_s
    assert value[("cadre_tasks_finished_total", (("status", "completed"),))] == 1
    assert "cadre_research_accuracy_score" not in families  # unmeasured: absent, not a made-up zero
    assert value[("cadre_instance_up", (("instance_id", "developer-1"), ("role", "developer")))] == 1

    # a crashed monitor comes back with the same figures, rebuilt from the metric stream
    monitor.kill()
    stack.add("monitor", instance="monitor-1", monitor_http_port=0)
    again = await snapshot_when(
        bus, lambda s: s.monitor.started_at > snap.monitor.started_at, "the restarted monitor"
    )
    assert again.monitor.replayed_events == len(metrics)
    assert figures_of(again) == figures_of(snap)


# --- health and alerts (monitor in-process, agents as processes) -----------------------------------------
async def test_a_killed_agent_raises_a_dead_alert_within_the_window_and_its_return_a_recovery(
    bus: Bus, stack: Stack, settings: StackSettings
) -> None:
    feed = await AlertFeed().start(bus)
    async with MonitorService(bus, monitor_settings(settings)) as monitor:
        agent = stack.add("developer", brain=ECHO)
        await snapshot_when(
            bus,
            lambda s: any(i.instance_id == "developer-1" and i.state == "alive" for i in s.instances),
            "developer-1 alive",
        )
        agent.kill()
        killed = time.monotonic()
        at, dead = await feed.wait("instance_dead", "developer-1")
        assert at - killed >= settings.suspect_after, "declared dead too early"
        assert dead.role == "developer" and dead.severity == "critical" and dead.monitor == "monitor-test"
        # within the window, by the monitor's own clock (the test's clock adds delivery and
        # scheduling delays): silent past dead_after, declared by the next check or two
        assert dead.last_seen_s is not None and dead.last_seen_s > settings.dead_after
        check = monitor_settings(settings).monitor_check_interval
        window = settings.dead_after + settings.heartbeat_interval + 2 * check
        assert dead.last_seen_s <= window, f"dead declared {dead.last_seen_s:.2f}s after the last heartbeat"
        await feed.wait("role_down", role="developer")
        assert monitor.board.instance_state("developer", "developer-1") == "dead"

        stack.add("developer", instance="developer-1", brain=ECHO)
        _, back = await feed.wait("instance_recovered", "developer-1")
        assert back.severity == "info" and back.live_instances == 1
        _, role_back = await feed.wait("role_recovered", role="developer")
        assert role_back.live_instances == 1
        snap = await request_snapshot(bus)
        (inst,) = [i for i in snap.instances if i.instance_id == "developer-1"]
        assert inst.state == "alive" and snap.health["developer"].state == "up"
        assert [a.kind for a in snap.alerts if a.role == "developer"][:2] == [
            "role_recovered",
            "instance_recovered",
        ]


async def test_a_restarted_monitor_rebuilds_its_figures_by_replaying_the_metric_stream(
    bus: Bus, settings: StackSettings
) -> None:
    s = bus.subjects
    ms = monitor_settings(settings)

    def metric(kind: str, role: str = "orchestrator", **kw: Any) -> MetricEvent:
        return MetricEvent(kind=kind, role=role, instance_id=f"{role}-1", at=now(), task_id="task_r", **kw)

    await bus.publish(s.metrics("orchestrator"), metric("decomposed", duration_s=1.5))
    await bus.publish(s.metrics("developer"), metric("step_completed", "developer", duration_s=900.0))
    async with MonitorService(bus, ms) as first:
        assert first.replayed_events == 2  # folded before it served
        # live events after the replay reach the same consumer
        await bus.publish(
            s.metrics("reviewer"), metric("step_completed", "reviewer", duration_s=480.0, issues_found=2)
        )
        await bus.publish(
            s.metrics("orchestrator"), metric("review_verdict", approved=True, first_round=True)
        )
        await bus.publish(s.metrics("orchestrator"), metric("task_finished", value=1.0))
        before = await snapshot_when(bus, lambda x: x.totals.events_folded == 5, "five events folded")
    assert before.developer.avg_coding_time == "15m" and before.reviewer.avg_review_time == "8m"
    assert before.developer.first_approval_rate == 1.0 and before.reviewer.issues_found_per_task == 2.0
    async with MonitorService(bus, ms) as second:
        assert second.replayed_events == 5
        after = await request_snapshot(bus)
    assert figures_of(after) == figures_of(before)


async def test_bad_metric_events_are_dead_lettered_and_the_monitor_keeps_counting(
    bus: Bus, settings: StackSettings
) -> None:
    s = bus.subjects
    async with MonitorService(bus, monitor_settings(settings)):
        await bus.js.publish(s.metrics("developer"), b"{not json")
        await bus.publish(
            s.metrics("orchestrator"),
            MetricEvent(kind="delegated", role="orchestrator", instance_id="o", at=now()),
        )
        snap = await snapshot_when(
            bus, lambda x: x.orchestrator.tasks_delegated == 1, "the good event counted"
        )
        assert snap.totals.events_folded == 1

        async def letters():
            from shared.contract.protocol import dead_letter_decoder

            found = await stream_messages(
                bus.js, s.stream_dead_letters, s.dead_letter_all, dead_letter_decoder
            )
            return [d for d in found if d.service == "monitor"] or None

        (letter,) = await wait_for_value(letters, what="the monitor's dead letter")
        assert "invalid metric event" in letter.reason and letter.payload == "{not json"


async def test_the_monitor_is_discoverable_through_nats_micro_and_lists_the_services_it_finds(
    bus: Bus, stack: Stack, settings: StackSettings
) -> None:
    async with MonitorService(bus, monitor_settings(settings)) as monitor:
        stack.add("developer", brain=ECHO)
        reply = await bus.nc.request("$SRV.INFO.cadre-monitor", b"", timeout=3)
        info = json.loads(reply.data)
        assert info["metadata"]["http_url"] == monitor.url
        assert [e["subject"] for e in info["endpoints"]] == [bus.subjects.monitor_snapshot]
        snap = await snapshot_when(
            bus,
            lambda x: {v.name for v in x.services} >= {"cadre-monitor", "cadre-developer"},
            "both services discovered",
        )
        (dev,) = [v for v in snap.services if v.name == "cadre-developer"]
        assert dev.metadata["instance_id"] == "developer-1" and dev.metadata["prefix"] == bus.subjects.prefix
        (mon,) = [v for v in snap.services if v.name == "cadre-monitor"]
        assert mon.endpoints[0].name == "snapshot" and mon.endpoints[0].num_requests >= 1


# --- the dashboard in headless Chromium -----------------------------------------------------------------
def _chromium() -> str:
    """Debian's chromium, which `make test` installs before pytest starts (never this test)."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.skip(
            "headless Chromium is absent: `make test` installs it (deploy/scripts/system-packages.sh);"
            " as non-root, `apt-get install chromium` by hand"
        )
    return exe


_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1200,900",
]


class Page:
    """One Chromium page driven over the DevTools protocol (to watch it update without a reload)."""

    def __init__(self, exe: str, profile: Path) -> None:
        self.exe, self.profile = exe, profile
        self._id = 0

    async def open(self, url: str) -> Page:
        self.proc = await asyncio.create_subprocess_exec(
            self.exe,
            *_FLAGS,
            f"--user-data-dir={self.profile}",
            "--remote-debugging-port=0",
            url,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        port_file = self.profile / "DevToolsActivePort"

        async def port():
            # "<port>\n/devtools/browser/<id>": wait for both lines, never a half-written port
            lines = port_file.read_text().split() if port_file.exists() else []
            return int(lines[0]) if len(lines) >= 2 else None

        dev_port = await wait_for_value(port, 30, what="Chromium's DevTools port")
        self.http = aiohttp.ClientSession()

        async def page_ws():
            async with self.http.get(f"http://127.0.0.1:{dev_port}/json/list") as r:
                pages = [t for t in await r.json() if t["type"] == "page"]
            return pages[0]["webSocketDebuggerUrl"] if pages else None

        self.ws = await self.http.ws_connect(
            await wait_for_value(page_ws, 30, what="the page target"), max_msg_size=0
        )
        return self

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self._id += 1
        await self.ws.send_json({"id": self._id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=30)
            if msg.get("id") == self._id:
                return msg["result"]

    async def eval(self, expression: str) -> Any:
        got = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in got:
            raise AssertionError(f"{expression!r} threw in the page: {got['exceptionDetails']}")
        return got["result"].get("value")  # absent when the expression is undefined

    async def text(self) -> str:
        # the page may still be loading (no <body> yet) right after Chromium opens it
        return await self.eval("document.body ? document.body.innerText : ''") or ""

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.ws.close()
            await self.http.close()
        if self.proc.returncode is None:
            self.proc.terminate()
            await self.proc.wait()


async def test_the_dashboard_in_headless_chromium_shows_live_agents_and_updates_after_a_task(
    bus: Bus, stack: Stack, settings: StackSettings, tmp_path: Path
) -> None:
    exe = await asyncio.to_thread(_chromium)
    stack.add("orchestrator")
    for role in ("researcher", "developer", "reviewer"):
        stack.add(role, brain=SCRIPTED)
    async with MonitorService(bus, monitor_settings(settings)) as monitor:
        url = f"{monitor.url}/"
        await snapshot_when(
            bus,
            lambda s: (
                {i.instance_id for i in s.instances if i.state == "alive"}
                >= {"developer-1", "reviewer-1", "researcher-1"}
            ),
            "three live agents",
        )

        # the page as a browser renders it from scratch (the command-line way)
        dom = await asyncio.to_thread(
            subprocess.run,
            [
                exe,
                *_FLAGS,
                f"--user-data-dir={tmp_path / 'dump'}",
                "--virtual-time-budget=3000",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=90,
        )
        for instance in ("developer-1", "reviewer-1", "researcher-1"):
            assert instance in dom.stdout, f"{instance} missing from the rendered dashboard"
        assert "no task yet" in dom.stdout

        # one open page, never reloaded, picks up a task that runs meanwhile
        page = await Page(exe, tmp_path / "live").open(url)
        try:

            async def shows(word: str):
                text = await page.text()
                return text if word in text else None

            before = await wait_for_value(
                lambda: shows("developer-1"), 30, interval=0.2, what="agents on the page"
            )
            assert "no task yet" in before
            assert await page.eval("document.getElementById('conn').textContent") == "live"
            result = await run_spec_task(bus, {"scores": [85, 98]})
            after = await wait_for_value(
                lambda: shows(result.task_id), 30, interval=0.2, what="the task on the open page"
            )
            assert "completed" in after
            await page.call(
                "Emulation.setDeviceMetricsOverride",
                width=1200,
                height=1300,
                deviceScaleFactor=1,
                mobile=False,
            )
            shot = await page.call("Page.captureScreenshot", format="png")
        finally:
            await page.close()
        ARTIFACTS.mkdir(exist_ok=True)
        live_png = ARTIFACTS / "dashboard-live.png"
        live_png.write_bytes(base64.b64decode(shot["data"]))

        # the saved artifact, taken the command-line way after the task
        png = ARTIFACTS / "dashboard.png"
        png.unlink(missing_ok=True)
        await asyncio.to_thread(
            subprocess.run,
            [
                exe,
                *_FLAGS,
                "--window-size=1200,1300",  # tall enough for every panel
                f"--user-data-dir={tmp_path / 'shot'}",
                "--virtual-time-budget=3000",
                f"--screenshot={png}",
                url,
            ],
            capture_output=True,
            timeout=90,
        )
        data = png.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000


async def test_a_role_with_pending_work_and_no_instance_pulling_raises_a_stalled_alert_until_one_pulls(
    bus: Bus, stack: Stack, settings: StackSettings
) -> None:
    from shared.contract.protocol import Heartbeat, encode

    feed = await AlertFeed().start(bus)
    stop = asyncio.Event()

    async def stuck_reviewer() -> None:
        """What issue 12 saw: an instance that heartbeats while its pull loop is dead."""
        started = now()
        while not stop.is_set():
            hb = Heartbeat(
                role="reviewer", instance_id="reviewer-stuck", at=now(), started_at=started, pulling=False
            )
            await bus.nc.publish(bus.subjects.heartbeat("reviewer", "reviewer-stuck"), encode(hb))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), settings.heartbeat_interval)  # the beat's cadence

    beats = asyncio.create_task(stuck_reviewer())
    try:
        async with MonitorService(bus, monitor_settings(settings, monitor_stall_interval=0.2)):
            await bus.publish(bus.subjects.work("reviewer", "normal"), echo_item("reviewer", "waiting"))
            _, stalled = await feed.wait("role_stalled", role="reviewer")
            assert stalled.severity == "critical" and stalled.pending == 1 and stalled.live_instances == 1
            assert "no instance pulling" in stalled.text
            assert not any(a.kind == "role_stalled" and a.role != "reviewer" for _, a in feed.alerts)

            stack.add("reviewer", brain=ECHO)
            _, back = await feed.wait("role_unstalled", role="reviewer")
            assert back.severity == "info" and back.pending == 0
    finally:
        stop.set()
        await beats
