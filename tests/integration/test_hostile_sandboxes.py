"""Two sandboxes at once, one attacking the other: nothing of the victim is reachable.

The victim holds a secret in its environment, its command line and a file in
its own writable directory (and in /tmp, /dev/shm, /var/tmp where it may write), and waits. While it waits, the attacker (another
sandbox, another uid) walks /proc for every other process's environ,
cmdline, cwd and open files, reads and writes the victim's directory by its
real path, looks through its own /tmp, /dev/shm and /var/tmp, and signals every pid it can see. What it managed is written to
its own directory as JSON and checked from outside; the victim must still be
alive and its file untouched.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import sys
from pathlib import Path

import pytest

from shared.tools.sandbox import Limits, Sandbox, SandboxResult
from shared.tools.uidpool import UidPool
from tests.helpers import assert_eventually

pytestmark = [
    pytest.mark.skipif(Sandbox().unavailable() is not None, reason="bubblewrap cannot run here"),
    pytest.mark.skipif(os.geteuid() != 0, reason="uids per sandbox are leased only when Cadre runs as root"),
]

VICTIM = """
import os
import sys
import time
from pathlib import Path

ctl = Path(sys.argv[1])
(ctl / "secret.txt").write_text(os.environ["VICTIM_SECRET"])
for shared in ("/tmp", "/dev/shm", "/var/tmp"):  # places two processes on one host often share
    try:
        Path(shared, "victim-secret.txt").write_text(os.environ["VICTIM_SECRET"])
        print("victim wrote", shared)
    except OSError:
        pass
(ctl / "ready").write_text(str(os.getpid()))
while not (ctl / "release").exists():  # alive (and holding its secret) until the attack is over
    time.sleep(0.05)
print("victim intact" if (ctl / "secret.txt").read_text() == os.environ["VICTIM_SECRET"] else "victim TAMPERED")
"""

ATTACKER = """
import json
import os
import signal
import sys
from pathlib import Path

out, victim_dir = Path(sys.argv[1]), Path(sys.argv[2])
needle = (out / "needle.txt").read_bytes()  # not on its own command line, where /proc/1 would show it
found = {"pids_seen": [], "leaks": [], "signalled": [], "wrote": [], "read": []}
for pid in os.listdir("/proc"):
    if not pid.isdigit() or int(pid) == os.getpid():
        continue
    found["pids_seen"].append(int(pid))
    for part in ("environ", "cmdline", "cwd/secret.txt", "root" + str(victim_dir) + "/secret.txt"):
        try:
            data = Path(f"/proc/{pid}/{part}").read_bytes()
        except OSError:
            continue
        if needle in data:
            found["leaks"].append(f"/proc/{pid}/{part}")
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            found["leaks"].append(f"/proc/{pid}/fd/{fd} listed")
    except OSError:
        pass
    for sig in (signal.SIGSTOP, signal.SIGKILL):
        try:
            os.kill(int(pid), sig)
            found["signalled"].append(f"{pid}:{sig.name}")
        except OSError:
            pass
for shared in ("/tmp", "/dev/shm", "/var/tmp"):
    try:
        for entry in Path(shared).iterdir():
            try:
                if needle in entry.read_bytes():
                    found["leaks"].append(str(entry))
            except OSError:
                pass
    except OSError:
        pass
try:
    found["read"].append((victim_dir / "secret.txt").read_text())
except OSError:
    pass
for name in ("secret.txt", "planted.txt", "release"):
    try:
        (victim_dir / name).write_text("attacker was here")
        found["wrote"].append(name)
    except OSError:
        pass
(out / "found.json").write_text(json.dumps(found))
"""


async def test_a_sandbox_cannot_see_read_write_or_signal_another_sandbox_running_beside_it(
    tmp_path: Path,
) -> None:
    sandbox = Sandbox(
        limits=Limits(processes=48, memory_bytes=2 * 1024**3),
        uids=UidPool(1_960_000_100, 8, tmp_path / "uids"),
    )
    secret = "victim-" + secrets.token_hex(12)
    victim_dir, attacker_dir = tmp_path / "victim", tmp_path / "attacker"
    victim_dir.mkdir()
    attacker_dir.mkdir()

    def victim() -> SandboxResult:
        with sandbox.slot() as box:
            box.prepare(victim_dir)
            argv = [sys.executable, "-c", VICTIM, str(victim_dir), secret]
            return box.run(argv, cwd=victim_dir, rw=[victim_dir], env={"VICTIM_SECRET": secret})

    def attacker() -> SandboxResult:
        with sandbox.slot() as box:
            box.prepare(attacker_dir)
            (attacker_dir / "needle.txt").write_text(secret)
            argv = [sys.executable, "-c", ATTACKER, str(attacker_dir), str(victim_dir)]
            return box.run(argv, cwd=attacker_dir, rw=[attacker_dir])

    running = asyncio.create_task(asyncio.to_thread(victim))
    try:
        await assert_eventually(
            lambda: (victim_dir / "ready").exists(), timeout=60, what="the victim waiting"
        )
        attack = await asyncio.to_thread(attacker)
    finally:
        (victim_dir / "release").touch()
        held = await running
    assert attack.sandboxed and attack.returncode == 0, attack
    found = json.loads((attacker_dir / "found.json").read_text())
    print("attacker saw pids", found["pids_seen"])
    assert found["leaks"] == [] and found["read"] == [], found
    assert found["wrote"] == [] and found["signalled"] == [], found
    assert (victim_dir / "secret.txt").read_text() == secret and not (victim_dir / "planted.txt").exists()
    print(held.output)
    assert held.sandboxed and held.returncode == 0 and "victim intact" in held.output, held
