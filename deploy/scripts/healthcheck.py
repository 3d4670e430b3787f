"""Container healthcheck: does THIS container's service answer? Exit 0 if so, 1 if not.

    cadre-entrypoint healthcheck <orchestrator|researcher|developer|reviewer|monitor>

A service is healthy when its nats micro endpoint answers ``$SRV.PING.cadre-<role>``
with this container's instance id: that proves the process runs, is connected and
authenticated, and its event loop is responsive. It connects with the service's
own credentials (the same ``CADRE_*`` environment), which may publish that one
ping subject. The monitor is checked through its HTTP ``/healthz``. (The NATS
container checks its own ``/healthz`` in docker-compose.yml: its image has no Cadre code.)
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request

from services.monitor.settings import MonitorSettings
from shared.bus.core import connect
from shared.bus.settings import BusSettings

__all__ = ["main"]

_WINDOW = 2.0


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 - a fixed local URL
            return 200 <= resp.status < 300
    except OSError as exc:
        print(f"unhealthy: {url}: {exc}", file=sys.stderr)
        return False


async def _answers(role: str) -> bool:
    settings = BusSettings()
    quick = settings.model_copy(update={"connect_timeout": 2.0})
    nc = await connect(quick, f"cadre-healthcheck-{role}", retry_forever=False)
    try:
        inbox = nc.new_inbox()
        sub = await nc.subscribe(inbox)
        await nc.publish(f"$SRV.PING.cadre-{role}", b"", reply=inbox)
        deadline = time.monotonic() + _WINDOW
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await sub.next_msg(timeout=left)
            except Exception:  # noqa: BLE001 - a timeout ends the wait
                break
            meta = json.loads(msg.data or b"{}").get("metadata") or {}
            if meta.get("instance_id") == settings.instance_id:
                return True
        print(f"unhealthy: no answer from {role} instance {settings.instance_id}", file=sys.stderr)
        return False
    finally:
        await nc.close()


def main(argv: list[str]) -> int:
    role = argv[0] if argv else ""
    if role == "monitor":
        port = MonitorSettings().monitor_http_port
        return 0 if _http_ok(f"http://127.0.0.1:{port}/healthz") else 1
    if role not in ("orchestrator", "researcher", "developer", "reviewer"):
        print("usage: healthcheck <orchestrator|researcher|developer|reviewer|monitor>", file=sys.stderr)
        return 2
    try:
        return 0 if asyncio.run(_answers(role)) else 1
    except Exception as exc:  # noqa: BLE001 - any failure is "unhealthy", said plainly
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
