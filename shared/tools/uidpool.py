"""One uid per concurrent sandbox, leased from a configured range through lock files.

The kernel counts the process limit (``RLIMIT_NPROC``) per real uid, so
sandboxes that shared one uid shared one process budget: a workspace's fork
bomb starved every other sandbox running at the same time, and two tasks'
code ran as the same user. When Cadre runs as root, each sandbox therefore
runs as its own uid from ``[first, first + count)``.

A uid is held by an exclusive ``flock`` on ``<run_dir>/uid-<uid>.lock``:
``flock`` locks belong to an open file description, so two leases in one
process (``concurrency > 1``) and leases of two agent processes on one host
exclude each other alike, and the kernel drops the lock when its holder dies
(a crashed agent never strands a uid). A uid is reused only after its lease
ends, and by then every process of the sandbox that used it is gone: bwrap
runs the command in its own PID namespace with ``--die-with-parent``.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from shared.contract.errors import CadreError

__all__ = ["DEFAULT_FIRST_UID", "DEFAULT_RUN_DIR", "DEFAULT_UID_COUNT", "SandboxBusy", "UidPool"]

# above systemd's container uid range (524288-1879048191): no account or container uses it
DEFAULT_FIRST_UID = 1_900_000_000
DEFAULT_UID_COUNT = 64
DEFAULT_RUN_DIR = Path("/run/cadre/sandbox-uids")


class SandboxBusy(CadreError):
    """Every uid of the range is leased (more concurrent sandboxes than uids); retried later."""

    def __init__(self, first: int, count: int, run_dir: Path) -> None:
        self.first, self.count = first, count
        super().__init__(
            f"all {count} sandbox uids ({first}..{first + count - 1}) are in use on this host"
            f" (leases in {run_dir}); raise CADRE_SANDBOX_UID_COUNT or lower the concurrency"
        )


class UidPool:
    """Leases uids from ``[first, first + count)``; see the module docstring."""

    def __init__(self, first: int, count: int, run_dir: Path = DEFAULT_RUN_DIR) -> None:
        if first <= 0 or count <= 0 or first + count > 2**31:
            raise ValueError(f"bad sandbox uid range: first={first} count={count}")
        self.first = first
        self.count = count
        self.run_dir = run_dir

    @contextmanager
    def lease(self) -> Iterator[int]:
        """A uid no other live lease on this host holds, for the duration of the ``with`` block."""
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise CadreError(f"cannot create the sandbox uid lease folder {self.run_dir}: {exc}") from exc
        for uid in range(self.first, self.first + self.count):  # lowest free first: its caches are warm
            fd = os.open(self.run_dir / f"uid-{uid}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                yield uid
            finally:
                os.close(fd)  # closing the only descriptor releases the lock
            return
        raise SandboxBusy(self.first, self.count, self.run_dir)
