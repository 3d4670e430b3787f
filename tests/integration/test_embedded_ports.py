"""`cadre up` on a machine it shares: the monitor's port gives way, unless the user chose it."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from services.monitor.http import MonitorHTTP
from services.monitor.settings import MonitorSettings
from shared.contract.monitoring import Snapshot
from shared.embedded.stack import PortTaken, monitor_port, read_state
from tests.helpers import wait_for_value

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PORT = MonitorSettings.model_fields["monitor_http_port"].default


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CADRE_")}
    env.update(PYTHONPATH=str(ROOT), NO_COLOR="1", **extra)
    return env


def _unused_snapshot() -> Snapshot:
    raise AssertionError("these tests only ask /healthz")


@pytest.fixture
def default_port_taken() -> Iterator[int]:
    """Hold the monitor's default port, as another user's `cadre up` on the same machine would."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.bind(("127.0.0.1", DEFAULT_PORT))
        sock.listen()
    except OSError:
        pass  # something else holds it already: taken either way
    try:
        yield DEFAULT_PORT
    finally:
        sock.close()


async def test_a_taken_default_monitor_port_gives_way_to_a_free_one(
    default_port_taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CADRE_MONITOR_HTTP_PORT", raising=False)
    settings = MonitorSettings(**monitor_port(MonitorSettings()))  # what cadre up hands the monitor
    http = MonitorHTTP(
        _unused_snapshot,
        settings.monitor_http_host,
        settings.monitor_http_port,
        fallback=settings.monitor_http_port_fallback,
    )
    url = await http.start()
    try:
        assert not url.endswith(f":{default_port_taken}")
        async with aiohttp.ClientSession() as session, session.get(f"{url}/healthz") as resp:
            assert resp.status == 200
    finally:
        await http.stop()


async def test_without_the_fallback_a_taken_port_fails_the_monitor(default_port_taken: int) -> None:
    http = MonitorHTTP(_unused_snapshot, "127.0.0.1", default_port_taken)
    with pytest.raises(OSError, match="address already in use"):
        await http.start()
    await http.stop()


def test_a_taken_port_the_user_chose_is_an_error_naming_the_port_and_the_setting(
    default_port_taken: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CADRE_MONITOR_HTTP_PORT", str(default_port_taken))
    with pytest.raises(PortTaken) as exc:
        monitor_port(MonitorSettings())
    assert str(default_port_taken) in str(exc.value) and "CADRE_MONITOR_HTTP_PORT" in str(exc.value)


async def _up(state_dir: Path, **env: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "shared.client.cli.app",
        "up",
        "--services",
        "monitor",
        "--state-dir",
        str(state_dir),
        cwd=state_dir.parent,
        env=_env(**env),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def test_two_cadre_up_in_two_folders_both_run_and_print_their_own_monitor_url(
    tmp_path: Path, default_port_taken: int
) -> None:
    dirs = [tmp_path / "a" / ".cadre", tmp_path / "b" / ".cadre"]
    for d in dirs:
        d.parent.mkdir(parents=True)
    procs = [await _up(d) for d in dirs]
    try:

        async def both_ready():
            states = [read_state(d) for d in dirs]
            return states if all(s is not None and s.ready for s in states) else None

        states = await wait_for_value(both_ready, 90, interval=0.2, what="both cadre up to be ready")
        urls = [s.monitor_url for s in states]
        assert urls[0] != urls[1] and f":{default_port_taken}/" not in "".join(urls)
        assert states[0].nats_url != states[1].nats_url
        outs = []
        for proc in procs:
            proc.send_signal(signal.SIGINT)
            out, err = await asyncio.wait_for(proc.communicate(), 60)
            assert proc.returncode == 0, err.decode()
            outs.append(out.decode())
        for url, out in zip(urls, outs, strict=True):
            assert f"monitor: {url}" in out
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()


async def test_cadre_up_with_a_taken_explicit_port_fails_with_one_line_naming_it(
    tmp_path: Path, default_port_taken: int
) -> None:
    state_dir = tmp_path / ".cadre"
    proc = await _up(state_dir, CADRE_MONITOR_HTTP_PORT=str(default_port_taken))
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 2, (out.decode(), err.decode())
    lines = [ln for ln in err.decode().splitlines() if ln.strip()]
    assert len(lines) == 1 and re.search(rf"port {default_port_taken}\b.*CADRE_MONITOR_HTTP_PORT", lines[0])
    assert read_state(state_dir) is None  # nothing left behind
