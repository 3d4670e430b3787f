"""The monitor's HTTP face: Prometheus ``/metrics``, JSON ``/status``, a live dashboard ``/``.

``/metrics`` is rendered by prometheus-client from a custom collector that
reads the current snapshot at scrape time (its own registry, so nothing
global leaks between monitors in one process). Port 0 binds a free port;
``MonitorHTTP.url`` tells the real one.
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Iterator
from importlib import resources

import msgspec
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from shared.contract.monitoring import Snapshot

__all__ = ["SnapshotCollector", "MonitorHTTP"]

logger = logging.getLogger(__name__)


class SnapshotCollector(Collector):
    """Turns a Snapshot into Prometheus metric families at every scrape."""

    def __init__(self, snapshot: Callable[[], Snapshot]) -> None:
        self._snapshot = snapshot

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        snap = self._snapshot()
        o, res, dev, rev, tot = snap.orchestrator, snap.researcher, snap.developer, snap.reviewer, snap.totals

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            return CounterMetricFamily(name, doc, value=value)

        def gauge(name: str, doc: str, value: float | None) -> Iterator[GaugeMetricFamily]:
            if value is not None:  # unmeasured figures are absent, never a made-up zero
                yield GaugeMetricFamily(name, doc, value=value)

        yield counter("cadre_tasks_delegated", "Work items the orchestrator delegated", o.tasks_delegated)
        yield counter("cadre_tasks_decomposed", "Tasks the orchestrator decomposed", o.tasks_decomposed)
        yield from gauge(
            "cadre_decomposition_seconds_avg", "Mean task decomposition time", o.avg_decomposition_time_s
        )
        yield counter("cadre_conflict_resolutions", "Conflicts resolved by policy", o.conflict_resolutions)
        yield counter("cadre_retries", "Steps retried after a failure", o.retries)
        yield counter("cadre_reassignments", "Steps re-assigned after a timeout", o.reassignments)

        completed = CounterMetricFamily("cadre_steps_completed", "Steps completed by agents", labels=["role"])
        failed = CounterMetricFamily("cadre_step_failures", "Steps that failed", labels=["role"])
        avg = GaugeMetricFamily("cadre_step_seconds_avg", "Mean completed step time", labels=["role"])
        for role, f, secs in (
            ("researcher", res, res.avg_research_time_s),
            ("developer", dev, dev.avg_coding_time_s),
            ("reviewer", rev, rev.avg_review_time_s),
        ):
            completed.add_metric([role], f.tasks_completed)
            failed.add_metric([role], f.failures)
            if secs is not None:
                avg.add_metric([role], secs)
        yield completed
        yield failed
        yield avg
        yield from gauge("cadre_research_accuracy_score", "Mean research_used judgement", res.accuracy_score)
        yield from gauge(
            "cadre_first_approval_rate",
            "Approved first-round reviews / first-round reviews",
            dev.first_approval_rate,
        )
        yield counter("cadre_review_issues_found", "Issues reported by reviews", rev.issues_found)
        yield from gauge(
            "cadre_review_issues_per_task", "Issues found per completed review", rev.issues_found_per_task
        )

        finished = CounterMetricFamily("cadre_tasks_finished", "Tasks finished", labels=["status"])
        finished.add_metric(["completed"], tot.tasks_completed)
        finished.add_metric(["failed"], tot.tasks_failed)
        yield finished

        tokens = CounterMetricFamily("cadre_llm_tokens", "Model tokens used", labels=["role", "type"])
        cost = CounterMetricFamily("cadre_llm_cost_usd", "Model cost in US dollars", labels=["role"])
        requests = CounterMetricFamily("cadre_llm_requests", "Model requests", labels=["role"])
        for role, u in (
            ("orchestrator", o.usage),
            ("researcher", res.usage),
            ("developer", dev.usage),
            ("reviewer", rev.usage),
        ):
            tokens.add_metric([role, "prompt"], u.prompt_tokens)
            tokens.add_metric([role, "completion"], u.completion_tokens)
            cost.add_metric([role], u.cost_usd)
            requests.add_metric([role], u.requests)
        yield tokens
        yield cost
        yield requests

        up = GaugeMetricFamily(
            "cadre_instance_up", "1 while an instance's heartbeat is fresh", labels=["role", "instance_id"]
        )
        load = GaugeMetricFamily(
            "cadre_instance_in_flight", "Work items held", labels=["role", "instance_id"]
        )
        seen = GaugeMetricFamily(
            "cadre_instance_last_seen_seconds", "Age of the last heartbeat", labels=["role", "instance_id"]
        )
        for inst in snap.instances:
            labels = [inst.role, inst.instance_id]
            up.add_metric(labels, 1.0 if inst.state != "dead" else 0.0)
            load.add_metric(labels, inst.in_flight)
            seen.add_metric(labels, inst.last_seen_s)
        yield up
        yield load
        yield seen
        live = GaugeMetricFamily("cadre_role_live_instances", "Alive or suspect instances", labels=["role"])
        for role, h in snap.health.items():
            live.add_metric([role], h.alive + h.suspect)
        yield live
        yield counter(
            "cadre_monitor_events_folded", "Metric events folded by this monitor", tot.events_folded
        )


_dashboard: bytes | None = None


def _dashboard_page() -> bytes:
    global _dashboard
    if _dashboard is None:
        _dashboard = resources.files("services.monitor").joinpath("dashboard.html").read_bytes()
    return _dashboard


class MonitorHTTP:
    """The aiohttp server; ``start()`` binds, ``stop()`` closes."""

    def __init__(
        self, snapshot: Callable[[], Snapshot], host: str, port: int, *, fallback: bool = False
    ) -> None:
        self._snapshot = snapshot
        self._host = host
        self._port = port
        self._fallback = fallback  # a taken port gives way to a free one
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(SnapshotCollector(snapshot))
        self._runner: web.AppRunner | None = None
        self.url: str | None = None

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self._index)
        app.router.add_get("/status", self._status)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        return app

    async def start(self) -> str:
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        try:
            await web.TCPSite(self._runner, self._host, self._port).start()
        except OSError as exc:
            if not (self._fallback and self._port and exc.errno == errno.EADDRINUSE):
                raise
            logger.warning("monitor http port %d is taken; binding a free port instead", self._port)
            await web.TCPSite(self._runner, self._host, 0).start()
        host, port = self._runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}"
        logger.info("monitor http listening url=%s", self.url)
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _index(self, _req: web.Request) -> web.Response:
        return web.Response(body=_dashboard_page(), content_type="text/html", charset="utf-8")

    async def _status(self, _req: web.Request) -> web.Response:
        return web.Response(
            body=msgspec.json.encode(self._snapshot()),
            content_type="application/json",
            headers={"Cache-Control": "no-store"},
        )

    async def _metrics(self, _req: web.Request) -> web.Response:
        body = generate_latest(self.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _req: web.Request) -> web.Response:
        return web.json_response({"ok": True})
