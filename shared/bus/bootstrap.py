"""One-shot topology bootstrap: ``python -m shared.bus.bootstrap``.

Under least privilege no service may create or delete streams, so a
deployment runs this once (with the ``bootstrap`` user's credentials) before
the services start with ``CADRE_BOOTSTRAP=false``. It connects, creates or
updates every stream, durable consumer, the workflow KV bucket and the
artifact object store (``ensure_topology`` is idempotent), and exits 0; it
exits 1 when the server is unreachable or refuses, so a compose file or CI
job sees the failure.

The first connection is retried for up to a minute because a container
orchestrator may start this before the server (podman-compose ignores
``depends_on`` conditions).
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time

from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import ServiceUnavailableError

from shared.bus.core import Bus, ensure_topology
from shared.bus.logs import setup_logging
from shared.bus.settings import BusSettings
from shared.contract.errors import NotConnected

__all__ = ["bootstrap", "main"]

logger = logging.getLogger(__name__)

_DEADLINE = 60.0


async def bootstrap(settings: BusSettings, deadline: float = _DEADLINE) -> None:
    """Create the topology for ``settings.prefix``, retrying for up to ``deadline`` seconds.

    Retried: no server reachable yet, and JetStream not ready yet (a fresh
    cluster has no meta leader for a few seconds: requests time out or answer
    503). Anything still failing at the deadline is raised.
    """
    give_up = time.monotonic() + deadline
    settings = settings.model_copy(update={"bootstrap": False})  # topology below, with retries
    while True:
        bus: Bus | None = None
        try:
            bus = await Bus.open(settings, "cadre-bootstrap", retry_forever=False)
            await ensure_topology(bus.js, settings)
            break
        except (NotConnected, NatsTimeoutError, TimeoutError, ServiceUnavailableError) as exc:
            if time.monotonic() >= give_up:
                raise
            logger.info("nats or jetstream not ready yet: %s: %s", type(exc).__name__, exc)
            if bus is not None:
                await bus.close()
            await asyncio.sleep(1.0)
    try:
        s = settings.subjects
        names = [s.stream_tasks, s.stream_work, s.stream_results, s.stream_events, s.stream_metrics]
        names += [s.stream_uploads, s.stream_downloads, s.stream_dead_letters]
        logger.info(
            "topology ready prefix=%s replicas=%d streams=%s kv=%s objects=%s",
            s.prefix,
            settings.js_replicas,
            ",".join(names),
            s.kv_workflows,
            s.object_store,
        )
    finally:
        await bus.close()


def main() -> int:
    settings = BusSettings()
    setup_logging("bootstrap", settings.log_level)
    try:
        asyncio.run(bootstrap(settings))
    except Exception as exc:  # the exit status is the contract: report and fail
        logger.error("bootstrap failed: %s: %s", type(exc).__name__, exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
