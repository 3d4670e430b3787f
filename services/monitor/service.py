"""The monitor service: heartbeats + metric events in, health, figures and alerts out.

On start it replays the metric stream from its first message (an ordered
consumer that then keeps following live), so a restarted monitor serves the
same figures it had. Only then does it serve: nats micro ``cadre-monitor``
(endpoint ``snapshot`` on ``<prefix>.monitor.snapshot``) and HTTP. Health is
re-checked every ``monitor_check_interval``; each change becomes an ``Alert``
on ``<prefix>.alert.<kind>``. Services are discovered with ``$SRV.INFO`` and
``$SRV.STATS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque

import msgspec
from nats.aio.msg import Msg
from nats.js.api import DeliverPolicy
from nats.micro.request import Request

from services.monitor.figures import Figures
from services.monitor.health import Clock, HealthBoard, SystemClock, Transition
from services.monitor.http import MonitorHTTP
from services.monitor.settings import MonitorSettings
from shared.bus.core import Bus
from shared.bus.service import Lifecycle, ServiceShell
from shared.contract.monitoring import Alert, EndpointView, MonitorInfo, ServiceView, Snapshot
from shared.contract.protocol import (
    AGENT_ROLES,
    PRIORITIES,
    ErrorReply,
    encode,
    heartbeat_decoder,
    metric_decoder,
    new_id,
    now,
)

__all__ = ["MonitorService", "discover"]

logger = logging.getLogger(__name__)

_DISCOVERY_WINDOW = 0.5


class _SrvEndpoint(msgspec.Struct):
    """The part of a nats micro ``$SRV.INFO`` / ``$SRV.STATS`` endpoint entry the monitor shows."""

    name: str = ""
    subject: str = ""
    num_requests: int = 0
    num_errors: int = 0


class _SrvInfo(msgspec.Struct):
    name: str
    id: str
    version: str = ""
    description: str | None = None
    metadata: dict[str, str] | None = None
    endpoints: list[_SrvEndpoint] | None = None


class _SrvStats(msgspec.Struct):
    id: str
    started: str | None = None
    endpoints: list[_SrvEndpoint] | None = None


async def _gather(bus: Bus, subject: str, window: float) -> list[bytes]:
    """Every reply to one request within ``window`` seconds (micro discovery is scatter-gather)."""
    out: list[bytes] = []

    async def collect(msg: Msg) -> None:
        if msg.data:  # a no-responders status has no body
            out.append(msg.data)

    inbox = bus.nc.new_inbox()
    sub = await bus.nc.subscribe(inbox, cb=collect)
    try:
        await bus.nc.publish(subject, b"", reply=inbox)
        await asyncio.sleep(window)  # the collection window itself, not a wait for something
    finally:
        with contextlib.suppress(Exception):
            await sub.unsubscribe()
    return out


async def discover(bus: Bus, window: float = _DISCOVERY_WINDOW) -> list[ServiceView]:
    """The micro services of this deployment (metadata ``prefix`` equal to ours), with stats."""
    prefix = bus.subjects.prefix
    infos: dict[str, _SrvInfo] = {}
    for raw in await _gather(bus, "$SRV.INFO", window):
        with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
            info = msgspec.json.decode(raw, type=_SrvInfo)
            if (info.metadata or {}).get("prefix") == prefix:
                infos[info.id] = info
    stats: dict[str, _SrvStats] = {}
    if infos:
        for raw in await _gather(bus, "$SRV.STATS", window):
            with contextlib.suppress(msgspec.DecodeError, msgspec.ValidationError):
                st = msgspec.json.decode(raw, type=_SrvStats)
                stats[st.id] = st
    views = []
    for info in infos.values():
        found = stats.get(info.id)
        counts = {e.name: e for e in (found.endpoints or [])} if found else {}
        endpoints = []
        for ep in info.endpoints or []:
            c = counts.get(ep.name)
            endpoints.append(
                EndpointView(
                    name=ep.name,
                    subject=ep.subject,
                    num_requests=c.num_requests if c else 0,
                    num_errors=c.num_errors if c else 0,
                )
            )
        views.append(
            ServiceView(
                name=info.name,
                id=info.id,
                version=info.version,
                description=info.description or "",
                metadata=info.metadata or {},
                endpoints=endpoints,
                started=found.started if found else None,
            )
        )
    return sorted(views, key=lambda v: (v.name, v.metadata.get("instance_id", v.id)))


class MonitorService(Lifecycle):
    """Health board + figures fed from the bus, served over NATS and HTTP."""

    def __init__(self, bus: Bus, settings: MonitorSettings, *, clock: Clock | None = None) -> None:
        self.bus = bus
        self.settings = settings
        self.instance_id = settings.instance_id
        self.figures = Figures(recent_tasks_kept=settings.monitor_recent_tasks)
        self.board = HealthBoard(
            suspect_after=settings.suspect_after,
            dead_after=settings.dead_after,
            clock=clock or SystemClock(),
            roles=tuple(settings.monitor_roles),
            forget_after=settings.monitor_forget_after,
        )
        self.alerts: deque[Alert] = deque(maxlen=settings.monitor_recent_alerts)
        self.services: list[ServiceView] = []
        self.http = MonitorHTTP(
            self.snapshot,
            settings.monitor_http_host,
            settings.monitor_http_port,
            fallback=settings.monitor_http_port_fallback,
        )
        self.ready = asyncio.Event()  # set once replayed and serving
        self._caught_up = asyncio.Event()
        self.replayed_events = 0
        self._replay_target = 0
        self._last_seq = 0
        self._shell = ServiceShell(bus, "monitor", self.instance_id, settings.heartbeat_interval)

    @property
    def url(self) -> str | None:
        """The HTTP base URL actually bound (``monitor_http_port=0`` picks a free port)."""
        return self.http.url

    # --- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        s = self.bus.subjects
        await self._shell.subscribe(s.heartbeat_all, self._on_heartbeat)
        self._shell.heartbeat_loop()
        self._shell.supervise(self._check_loop, "monitor-check")
        await self._replay()
        await self.http.start()
        await self._shell.add_micro(
            "Cadre monitor: health, figures, alerts",
            {"snapshot": (s.monitor_snapshot, self._on_snapshot)},
            metadata={"http_url": self.url or ""},
        )
        self._shell.supervise(self._discovery_loop, "monitor-discovery")
        self._shell.supervise(self._stall_loop, "monitor-stall")
        self.ready.set()
        logger.info(
            "monitor started instance=%s replayed=%d url=%s", self.instance_id, self.replayed_events, self.url
        )

    async def stop(self) -> None:
        # each step is bounded: a stuck drain must not keep the process from exiting
        if await self._shell.close():
            await self._shell.bounded(self.http.stop(), "http stop")
            logger.info("monitor stopped instance=%s", self.instance_id)

    # --- metric stream -----------------------------------------------------------------
    async def _replay(self) -> None:
        """Fold every stored metric event before serving; then the same consumer follows live."""
        s = self.bus.subjects
        js = self.bus.js
        info = await js.stream_info(s.stream_metrics)
        self._replay_target = info.state.last_seq if info.state.messages else 0
        sub = await js.subscribe(
            s.metrics_all,
            stream=s.stream_metrics,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            cb=self._on_metric,
        )
        self._shell.track(sub)
        deadline = time.monotonic() + self.settings.monitor_replay_timeout
        while self._last_seq < self._replay_target:
            if time.monotonic() > deadline:
                logger.warning(
                    "metric replay incomplete after %.0fs at seq=%d of %d; serving anyway",
                    self.settings.monitor_replay_timeout,
                    self._last_seq,
                    self._replay_target,
                )
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._caught_up.wait(), 1.0)
            state = (await js.stream_info(s.stream_metrics)).state
            if not state.messages or state.first_seq > self._replay_target:
                break  # what was left to replay expired meanwhile
        logger.info("metric replay done events=%d up_to_seq=%d", self.replayed_events, self._last_seq)

    async def _on_metric(self, msg: Msg) -> None:
        seq = msg.metadata.sequence.stream if msg.metadata else self._last_seq + 1
        replaying = seq <= self._replay_target
        try:
            event = metric_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.warning("bad metric event seq=%d err=%s", seq, exc)
            if not replaying:  # replays would file the same letter again on every restart
                with contextlib.suppress(Exception):
                    await self.bus.dead_letter(
                        "monitor",
                        msg.subject,
                        msg.data,
                        f"invalid metric event: {exc}",
                        dict(msg.headers or {}),
                    )
        else:
            self.figures.fold(event)
            if replaying:
                self.replayed_events += 1
        self._last_seq = seq
        if seq >= self._replay_target:
            self._caught_up.set()

    # --- heartbeats and health ---------------------------------------------------------------
    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            hb = heartbeat_decoder.decode(msg.data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            logger.warning("bad heartbeat subject=%s err=%s", msg.subject, exc)
            with contextlib.suppress(Exception):
                await self.bus.dead_letter("monitor", msg.subject, msg.data, f"invalid heartbeat: {exc}")
            return
        await self._raise(self.board.beat(hb))

    async def _check_loop(self) -> None:
        while True:
            try:
                await self._raise(self.board.check())
            except Exception:  # the loop must outlive any one bad round
                logger.exception("health check failed")
            await asyncio.sleep(self.settings.monitor_check_interval)

    async def _raise(self, transitions: list[Transition]) -> None:
        for t in transitions:
            alert = self._alert(t)
            self.alerts.append(alert)
            log = logger.warning if alert.severity == "critical" else logger.info
            log(
                "alert kind=%s role=%s instance=%s: %s", alert.kind, alert.role, alert.instance_id, alert.text
            )
            with contextlib.suppress(Exception):
                await self.bus.nc.publish(
                    self.bus.subjects.alert(alert.kind),
                    encode(alert),
                    headers={"Nats-Msg-Id": alert.alert_id},
                )

    def _alert(self, t: Transition) -> Alert:
        who = f"{t.role} instance {t.instance_id}"
        texts = {
            "instance_dead": f"{who} is dead: no heartbeat for {t.last_seen_s or 0:.1f}s",
            "instance_recovered": f"{who} recovered after {t.last_seen_s or 0:.1f}s of silence",
            "role_down": f"role {t.role} has no live instance",
            "role_recovered": f"role {t.role} is back with {t.live_instances} live instance(s)",
            "role_stalled": f"role {t.role} has {t.pending} pending work item(s) and no instance pulling"
            f" ({t.live_instances} live)",
            "role_unstalled": f"role {t.role} is pulling again ({t.pending} pending)",
        }
        return Alert(
            alert_id=new_id("alert"),
            kind=t.kind,
            severity="critical" if t.kind in ("instance_dead", "role_down", "role_stalled") else "info",
            role=t.role,
            instance_id=t.instance_id,
            text=texts[t.kind],
            at=now(),
            last_seen_s=None if t.last_seen_s is None else round(t.last_seen_s, 3),
            live_instances=t.live_instances,
            monitor=self.instance_id,
            pending=t.pending,
        )

    async def _stall_loop(self) -> None:
        """Every ``monitor_stall_interval``: a role with pending work and no instance pulling is stalled."""
        s = self.bus.subjects
        roles = [r for r in AGENT_ROLES if r in self.settings.monitor_roles]
        while True:
            await asyncio.sleep(self.settings.monitor_stall_interval)
            for role in roles:
                try:
                    pending = 0
                    for priority in PRIORITIES:
                        info = await self.bus.js.consumer_info(s.stream_work, s.work_consumer(role, priority))
                        pending += info.num_pending or 0
                except Exception as exc:  # e.g. no permission or the stream's leader moving: next round
                    logger.warning("pending work of role=%s unknown err=%s", role, exc)
                    continue
                await self._raise(self.board.stall(role, pending))

    @property
    def fatal(self) -> asyncio.Event:
        """Set when a loop of the monitor keeps dying: the process should exit non-zero."""
        return self._shell.fatal

    async def _discovery_loop(self) -> None:
        while True:
            try:
                self.services = await discover(self.bus)
            except Exception as exc:  # discovery is best effort; keep the last answer
                logger.warning("service discovery failed err=%s", exc)
            await asyncio.sleep(self.settings.monitor_discovery_interval)

    # --- serving ------------------------------------------------------------------------------
    def snapshot(self) -> Snapshot:
        """Everything the monitor knows now, in the spec's shape plus health."""
        f = self.figures
        instances = [
            msgspec.structs.replace(v, steps_completed=done, steps_failed=failed)
            for v in self.board.instances()
            for done, failed in [f.by_instance(v.instance_id)]
        ]
        return Snapshot(
            orchestrator=f.orchestrator(),
            researcher=f.researcher(),
            developer=f.developer(),
            reviewer=f.reviewer(),
            totals=f.totals(),
            health=self.board.role_health(),
            instances=instances,
            alerts=list(reversed(self.alerts)),
            recent_tasks=f.recent_tasks(),
            services=list(self.services),
            monitor=MonitorInfo(
                instance_id=self.instance_id,
                started_at=self._shell.started_at,
                ready=self.ready.is_set(),
                replayed_events=self.replayed_events,
                http_url=self.url,
                suspect_after=self.settings.suspect_after,
                dead_after=self.settings.dead_after,
            ),
            generated_at=now(),
        )

    async def _on_snapshot(self, req: Request) -> None:
        try:
            await req.respond(encode(self.snapshot()))
        except Exception as exc:  # the error boundary: a requester never waits for a timeout
            logger.exception("snapshot request failed")
            err = ErrorReply(code="internal", message=f"{type(exc).__name__}: {exc}")
            await req.respond_error("500", str(exc) or type(exc).__name__, data=encode(err))
