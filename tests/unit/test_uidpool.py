"""Sandbox uids are leased one per concurrent sandbox, across threads and processes of one host."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from shared.agent.settings import AgentSettings
from shared.tools.testing import TestRuntime
from shared.tools.uidpool import SandboxBusy, UidPool

FIRST = 1_950_000_000

HOLDER = """
import sys
from pathlib import Path
from shared.tools.uidpool import UidPool

with UidPool(int(sys.argv[1]), int(sys.argv[2]), Path(sys.argv[3])).lease() as uid:
    print(uid, flush=True)
    sys.stdin.readline()  # hold the lease until the parent closes stdin (or kills us)
"""


def _holder(run_dir: Path, count: int) -> tuple[subprocess.Popen[str], int]:
    """A second agent process on this host, holding one lease of the same range."""
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", HOLDER, str(FIRST), str(count), str(run_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def test_two_leases_held_at_once_get_different_uids_and_a_released_one_is_reused(tmp_path: Path) -> None:
    pool = UidPool(FIRST, 4, tmp_path)
    with pool.lease() as a, pool.lease() as b:
        assert a != b and {a, b} <= set(range(FIRST, FIRST + 4))
    with pool.lease() as again:
        assert again == FIRST  # the lowest free uid: its caches are warm


def test_a_uid_leased_by_another_process_on_the_host_is_not_handed_out(tmp_path: Path) -> None:
    proc, theirs = _holder(tmp_path, 2)
    try:
        with UidPool(FIRST, 2, tmp_path).lease() as ours:
            assert ours != theirs
    finally:
        assert proc.stdin is not None
        proc.stdin.close()
        assert proc.wait(timeout=30) == 0


def test_when_every_uid_is_leased_the_next_sandbox_is_refused_with_the_setting_named(tmp_path: Path) -> None:
    pool = UidPool(FIRST, 2, tmp_path)
    with pool.lease(), pool.lease():
        with pytest.raises(SandboxBusy) as info:
            with pool.lease():
                pass
    assert "all 2 sandbox uids" in str(info.value) and "CADRE_SANDBOX_UID_COUNT" in str(info.value)
    assert not info.value.non_retryable  # the step is retried once a sandbox ends


def test_the_lease_of_a_killed_agent_process_is_free_again(tmp_path: Path) -> None:
    proc, theirs = _holder(tmp_path, 1)
    pool = UidPool(FIRST, 1, tmp_path)
    with pytest.raises(SandboxBusy):
        with pool.lease():
            pass
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    with pool.lease() as uid:
        assert uid == theirs


def test_a_range_outside_the_valid_uids_is_refused() -> None:
    with pytest.raises(ValueError, match="bad sandbox uid range"):
        UidPool(2**31 - 1, 2, Path("/nonexistent"))
    with pytest.raises(ValueError, match="bad sandbox uid range"):
        UidPool(0, 10, Path("/nonexistent"))


def test_the_settings_give_the_sandbox_its_uid_range_and_the_installer_its_build_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CADRE_SANDBOX_UID", str(FIRST))
    monkeypatch.setenv("CADRE_SANDBOX_UID_COUNT", "3")
    monkeypatch.setenv("CADRE_SANDBOX_RUN_DIR", str(tmp_path / "leases"))
    monkeypatch.setenv("CADRE_ENV_ALLOW_BUILDS", "true")
    runtime = TestRuntime.from_settings(AgentSettings())
    pool = runtime.sandbox.uids
    assert (pool.first, pool.count, pool.run_dir) == (FIRST, 3, tmp_path / "leases")
    assert runtime.envs.allow_builds is True
    assert TestRuntime.from_settings(AgentSettings(env_allow_builds=False)).envs.allow_builds is False
