"""Hostile workspaces against the real sandbox: every attack fails, the honest test still passes.

Two sandboxes at once run as two uids: one's fork bomb meets its own process
limit while the other's honest tests start their processes.

The workspace's own tests *assert that each attack worked*; in the sandbox
each such test fails, and the honest test beside them passes. What the
attacks would have touched (the parent's secrets, the real NATS server,
files outside the copy, processes left behind) is also checked from outside.
"""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
import uuid
from pathlib import Path
from urllib.parse import urlparse

import pytest

from shared.tools.pyenv import EnvBuilder
from shared.tools.sandbox import Limits, Sandbox, SandboxResult
from shared.tools.testing import TestRuntime, run_suite
from shared.tools.uidpool import UidPool
from tests.helpers import assert_eventually

pytestmark = pytest.mark.skipif(Sandbox().unavailable() is not None, reason="bubblewrap cannot run here")

CONFTEST = """
import os
import pytest

STOLEN = {}
# at collection time, as the issue's conftest did: every other process's environment
for pid in os.listdir("/proc"):
    if pid.isdigit() and int(pid) != os.getpid():
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                STOLEN[pid] = fh.read()
        except OSError:
            pass
STOLEN["self"] = repr(dict(os.environ)).encode()


@pytest.fixture
def stolen():
    return STOLEN
"""

ATTACKS = """
import os
import socket
import subprocess
import time
from pathlib import Path

TARGETS = Path(__file__).with_name("targets.txt").read_text().split()
SECRET, PORT, OUTSIDE, MARKER = TARGETS[0].encode(), int(TARGETS[1]), Path(TARGETS[2]), TARGETS[3]


def test_honest_arithmetic_passes():
    assert sum(range(10)) == 45


def test_attack_reads_the_parents_secrets(stolen):
    assert any(SECRET in env for env in stolen.values()), f"read {len(stolen)} environments, no secret"


def test_attack_connects_to_the_nats_port():
    with socket.create_connection(("127.0.0.1", PORT), timeout=3) as sock:
        assert sock.recv(4096).startswith(b"INFO")


def test_attack_writes_outside_its_copy():
    OUTSIDE.write_text("escaped")


def test_attack_writes_to_the_system():
    Path("/etc/cadre-owned").write_text("escaped")


def test_attack_fork_bomb():
    children = []
    try:
        for _ in range(400):
            pid = os.fork()
            if pid == 0:
                time.sleep(30)
                os._exit(0)
            children.append(pid)
    finally:
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
    assert len(children) == 400


def test_attack_allocates_8_gib():
    block = bytearray(8 * 1024**3)
    assert len(block) == 8 * 1024**3


def test_attack_leaves_a_process_running_forever():
    # double-forked, own session: outlives pytest unless the whole PID namespace dies
    subprocess.Popen(["sleep", "3600", MARKER], start_new_session=True)
    assert False, "started the runaway; it must be gone once the run ends"
"""


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    return root


def _runtime(tmp_path: Path, **limits: object) -> TestRuntime:
    sandbox = Sandbox(limits=Limits(processes=64, memory_bytes=2 * 1024**3, **limits))  # type: ignore[arg-type]
    return TestRuntime(sandbox, EnvBuilder(sandbox, tmp_path / "envs", install=False))


def _processes_with(marker: str) -> list[str]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(pid)
    return found


def test_every_attack_of_a_hostile_workspace_fails_while_its_honest_test_passes(
    tmp_path: Path, nats_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"s3cret-{uuid.uuid4().hex}"
    # the service's own credentials, in the environment of the process that runs the tests
    monkeypatch.setenv("CADRE_NATS_PASSWORD", secret)
    monkeypatch.setenv("CADRE_LLM_API_KEY", secret)
    outside = tmp_path / "escaped.txt"
    marker = f"cadre-runaway-{uuid.uuid4().hex[:8]}"
    port = urlparse(nats_url).port
    ws = _write(
        tmp_path / "ws",
        {
            "conftest.py": CONFTEST,
            "test_attacks.py": ATTACKS,
            "targets.txt": f"{secret} {port} {outside} {marker}\n",
        },
    )
    run = run_suite(ws, timeout=240, coverage=False, runtime=_runtime(tmp_path))

    assert run is not None and run.report.sandboxed
    out = run.outcomes
    assert out["test_attacks::test_honest_arithmetic_passes"] == "passed"
    attacks = {t: o for t, o in out.items() if "attack" in t.split("::")[-1]}
    assert len(attacks) == 7 and set(attacks.values()) == {"failed"}, attacks
    assert (run.report.passed, run.report.failed, run.report.errors) == (1, 7, 0)
    assert run.report.environment_error is None
    # and from outside: nothing leaked, nothing written, nothing left running
    assert secret not in run.report.output_tail
    assert not outside.exists() and not Path("/etc/cadre-owned").exists()
    assert _processes_with(marker) == []
    assert sorted(p.name for p in ws.iterdir()) == ["conftest.py", "targets.txt", "test_attacks.py"]


def test_a_test_that_runs_forever_is_stopped_by_the_wall_clock_and_leaves_nothing_behind(
    tmp_path: Path,
) -> None:
    marker = f"cadre-forever-{uuid.uuid4().hex[:8]}"
    ws = _write(
        tmp_path / "ws",
        {
            "test_forever.py": f"""
                import subprocess


                def test_spins_forever():
                    subprocess.Popen(["sleep", "3600", "{marker}"], start_new_session=True)
                    while True:
                        pass
            """
        },
    )
    run = run_suite(ws, timeout=4, coverage=False, runtime=_runtime(tmp_path))
    assert run is not None and run.report.errors == 1 and "timed out after 4s" in run.report.output_tail
    assert _processes_with(marker) == []


def test_cpu_time_is_limited_even_before_the_wall_clock(tmp_path: Path) -> None:
    ws = _write(
        tmp_path / "ws",
        {
            "test_spin.py": """
                def test_spins():
                    while True:
                        pass
            """,
        },
    )
    run = run_suite(ws, timeout=120, coverage=False, runtime=_runtime(tmp_path, cpu_seconds=2))
    assert run is not None and not run.report.ok
    assert "timed out" not in run.report.output_tail  # the CPU rlimit (SIGXCPU/SIGKILL) ended it first


BOMB = """
import errno
import os
import sys
import time
from pathlib import Path

ctl = Path(sys.argv[1])
r, w = os.pipe()
children, failed = 0, 0
while children < 400:
    try:
        pid = os.fork()
    except OSError as exc:  # the process limit of this sandbox's uid
        failed = exc.errno
        break
    if pid == 0:
        os.close(w)
        os.read(r, 1)  # each child lives until the bomb exits and the pipe closes
        os._exit(0)
    children += 1
(ctl / "bomb.txt").write_text(f"{os.getuid()} {children} {failed == errno.EAGAIN}")
while not (ctl / "release").exists():  # hold every process until the other sandbox is done
    time.sleep(0.05)
"""

HONEST = """
import os
import subprocess
from pathlib import Path

BOMB_UID = int(Path(__file__).with_name("bomb_uid.txt").read_text())


def test_honest_work_starts_twenty_processes_while_the_bomb_holds_its_limit():
    procs = [subprocess.Popen(["sleep", "0.1"]) for _ in range(20)]
    assert [p.wait() for p in procs] == [0] * 20


def test_it_runs_as_a_uid_other_than_the_bombs():
    assert os.getuid() != BOMB_UID
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="uids per sandbox are leased only when Cadre runs as root")
async def test_a_fork_bomb_in_one_sandbox_does_not_starve_another_running_at_the_same_time(
    tmp_path: Path,
) -> None:
    sandbox = Sandbox(
        limits=Limits(processes=48, memory_bytes=2 * 1024**3),
        uids=UidPool(1_960_000_000, 8, tmp_path / "uids"),
    )
    runtime = TestRuntime(sandbox, EnvBuilder(sandbox, tmp_path / "envs", install=False))
    ctl = tmp_path / "ctl"
    ctl.mkdir()

    def bomb() -> SandboxResult:
        with sandbox.slot() as box:
            box.prepare(ctl)
            return box.run([sys.executable, "-c", BOMB, str(ctl)], cwd=ctl, rw=[ctl])

    bombing = asyncio.create_task(asyncio.to_thread(bomb))
    try:
        await assert_eventually(lambda: (ctl / "bomb.txt").exists(), timeout=60, what="the bomb at its limit")
        bomb_uid, children, hit_limit = (ctl / "bomb.txt").read_text().split()
        assert hit_limit == "True" and int(children) < 48, "the bomb was stopped by its own process limit"
        ws = _write(tmp_path / "ws", {"test_honest.py": HONEST, "bomb_uid.txt": bomb_uid})
        run = await asyncio.to_thread(run_suite, ws, 120, coverage=False, runtime=runtime)
    finally:
        (ctl / "release").touch()
        result = await bombing
    assert result.returncode == 0 and result.sandboxed, result.output
    assert run is not None and run.report.sandboxed
    assert (run.report.passed, run.report.failed, run.report.errors) == (2, 0, 0), run.report.output_tail
    assert 1_960_000_000 <= int(bomb_uid) < 1_960_000_008
