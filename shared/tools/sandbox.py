"""Run untrusted workspace code in a bubblewrap sandbox.

Workspace code (tests, ``conftest.py``, ``manage.py``, packages a project
declares) is untrusted: it runs only through :class:`Sandbox`. Inside:

- private PID, IPC, UTS and network namespaces (no network at all unless the
  caller asks for it, as the dependency installer does), a private ``/proc``,
  a minimal ``/dev``;
- an empty environment plus what the caller passes (never the service's
  ``CADRE_*`` settings or credentials);
- the system (``/usr``, ``/etc``) and the interpreter read-only; writable only
  the folders the caller binds (the step's own copy of the workspace, its
  report folder) and a size-bounded ``/tmp``;
- an unprivileged uid of its own: when Cadre runs as root, each concurrent
  sandbox gets a uid leased from a range (``shared.tools.uidpool``) and
  ``setpriv`` drops to it, so the per-uid process limit is per sandbox; as
  any other user, bwrap's user namespace keeps it unprivileged, but every
  sandbox then counts against the service user's process limit;
- rlimits on CPU time, address space, processes and file size (``prlimit``),
  and a wall-clock timeout after which the whole PID namespace is killed.

Several commands that share files (the tests, then ``coverage json`` on
their data) run in one :meth:`Sandbox.slot`: one uid, leased for the block.

When bwrap cannot run here, :meth:`Sandbox.unavailable` says why and the caller
refuses to run the code. ``CADRE_SANDBOX_ALLOW_UNSANDBOXED=true`` runs it
without namespaces (rlimits still apply), logging a warning on every run.
"""

from __future__ import annotations

import copy
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from shared.contract.errors import CadreError
from shared.tools.uidpool import DEFAULT_FIRST_UID, DEFAULT_RUN_DIR, DEFAULT_UID_COUNT, UidPool

if TYPE_CHECKING:
    from shared.agent.settings import AgentSettings

__all__ = ["Limits", "Sandbox", "SandboxResult", "SandboxUnavailable", "read_tail"]

logger = logging.getLogger(__name__)

_TAIL = 4000
_SYSTEM_RO = ("/usr", "/etc")
_MERGED = ("bin", "sbin", "lib", "lib64", "lib32", "libx32")


class SandboxUnavailable(CadreError):
    """Workspace code was not run: the sandbox cannot run here and unsandboxed runs are not allowed."""

    non_retryable = True

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"sandbox unavailable: {reason}")


@dataclass(frozen=True)
class Limits:
    """What one sandboxed command may use; ``None`` leaves that resource unlimited."""

    cpu_seconds: int | None = 300
    memory_bytes: int | None = 2 * 1024**3
    processes: int | None = 256
    file_size_bytes: int | None = 256 * 1024**2
    wall_seconds: float = 300.0
    tmp_bytes: int = 512 * 1024**2


@dataclass(frozen=True)
class SandboxResult:
    """How a sandboxed command ended: exit code, output tails, and whether the wall clock stopped it."""

    returncode: int
    stdout: str
    stderr: str
    timed_out: bool
    wall_seconds: float
    sandboxed: bool

    @property
    def output(self) -> str:
        """stderr then stdout, so a tail ends with the command's own summary."""
        return (self.stderr + "\n" if self.stderr.strip() else "") + self.stdout


def read_tail(path: Path, limit: int = _TAIL) -> str:
    """The last ``limit`` characters of a file the sandbox wrote (never the whole file)."""
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - limit * 4))
            return fh.read().decode("utf-8", "replace")[-limit:]
    except OSError:
        return ""


def _merged_usr() -> list[str]:
    """Symlinks like ``/bin -> usr/bin`` recreated inside; real top-level dirs are bound read-only."""
    args: list[str] = []
    for name in _MERGED:
        top = Path("/") / name
        if top.is_symlink():
            args += ["--symlink", os.readlink(top), str(top)]
        elif top.is_dir():
            args += ["--ro-bind", str(top), str(top)]
    return args


class Sandbox:
    """Runs a command under bubblewrap with limits (see the module docstring)."""

    def __init__(
        self,
        *,
        limits: Limits | None = None,
        uids: UidPool | None = None,
        allow_unsandboxed: bool = False,
        bwrap: str = "bwrap",
    ) -> None:
        self.limits = limits or Limits()
        self.uids = uids or UidPool(DEFAULT_FIRST_UID, DEFAULT_UID_COUNT, DEFAULT_RUN_DIR)
        self.uid: int | None = None  # set inside slot(): the leased uid (as root)
        self.allow_unsandboxed = allow_unsandboxed
        self.bwrap = shutil.which(bwrap) or ""
        self._unavailable: str | None | bool = False  # False: not probed yet

    @classmethod
    def from_settings(cls, settings: AgentSettings) -> Sandbox:
        limits = Limits(
            cpu_seconds=settings.sandbox_cpu_seconds,
            memory_bytes=settings.sandbox_memory_mb * 1024**2,
            processes=settings.sandbox_max_processes,
            file_size_bytes=settings.sandbox_file_size_mb * 1024**2,
            wall_seconds=settings.sandbox_wall_seconds,
        )
        return cls(
            limits=limits,
            uids=UidPool(settings.sandbox_uid, settings.sandbox_uid_count, settings.sandbox_run_dir),
            allow_unsandboxed=settings.sandbox_allow_unsandboxed,
        )

    @property
    def privileged(self) -> bool:
        """Running as root: no user namespace; ``setpriv`` drops to ``uid`` inside."""
        return os.geteuid() == 0

    def unavailable(self) -> str | None:
        """Why workspace code cannot run sandboxed here (``None`` when it can). Probed once."""
        if self._unavailable is False:
            self._unavailable = self._probe()
            if self._unavailable:
                logger.warning("sandbox unavailable: %s", self._unavailable)
        return self._unavailable if isinstance(self._unavailable, str) else None

    def _probe(self) -> str | None:
        if not self.bwrap:
            return "bubblewrap (bwrap) is not installed: install the Debian package 'bubblewrap'"
        for tool in ("prlimit", "setpriv") if self.privileged else ("prlimit",):
            if not shutil.which(tool):
                return f"'{tool}' (util-linux) is not installed"
        with tempfile.TemporaryDirectory(prefix="cadre-probe-") as tmp:
            res = self._run_bwrap(["/bin/true"], rw=[Path(tmp)], ro=[], env={}, cwd=Path(tmp), network=False)
        if res.returncode != 0:
            detail = (res.stderr or res.stdout).strip().splitlines()
            return f"bwrap cannot create a sandbox here: {detail[-1] if detail else f'exit {res.returncode}'}"
        return None

    @contextmanager
    def slot(self) -> Iterator[Sandbox]:
        """This sandbox bound to one uid of its own for the block (as root; otherwise as it is).

        Commands run through the yielded sandbox share that uid, so files one
        writes the next may change; no other sandbox on this host has it
        meanwhile. Raises ``SandboxBusy`` when every uid of the range is leased.
        """
        if self.uid is not None or not self.privileged:
            yield self
            return
        with self.uids.lease() as uid:
            bound = copy.copy(self)
            bound.uid = uid
            yield bound

    def prepare(self, *paths: Path) -> None:
        """Make folders writable by this slot's uid (they are the only places it may write)."""
        if not self.privileged:
            return
        if self.uid is None:
            raise RuntimeError("Sandbox.prepare() needs a uid: call it on the sandbox slot() yields")
        for path in paths:
            for item in [path, *path.rglob("*")]:
                os.lchown(item, self.uid, self.uid)

    def run(
        self,
        argv: list[str],
        *,
        cwd: Path,
        rw: Iterable[Path] = (),
        ro: Iterable[Path] = (),
        env: Mapping[str, str] | None = None,
        network: bool = False,
        limits: Limits | None = None,
        tail_chars: int = _TAIL,
    ) -> SandboxResult:
        """Run ``argv`` sandboxed; ``rw`` folders are the only writable ones (besides ``/tmp``).

        Raises nothing for the command's own failures: they are in the result.
        Callers must check :meth:`unavailable` first (or allow unsandboxed runs).
        Outside a :meth:`slot`, the command gets a uid of its own for this run.
        """
        if self.uid is None and self.privileged and self.unavailable() is None:
            with self.slot() as bound:
                return bound.run(
                    argv,
                    cwd=cwd,
                    rw=rw,
                    ro=ro,
                    env=env,
                    network=network,
                    limits=limits,
                    tail_chars=tail_chars,
                )
        reason = self.unavailable()
        if reason is not None:
            if not self.allow_unsandboxed:
                raise SandboxUnavailable(reason)
            logger.warning(
                "RUNNING WORKSPACE CODE UNSANDBOXED (CADRE_SANDBOX_ALLOW_UNSANDBOXED=true): %s (%s)",
                " ".join(argv[:4]),
                reason,
            )
            return self._execute(self._prlimit(limits) + argv, env or {}, cwd, limits, False, tail_chars)
        return self._run_bwrap(
            argv,
            rw=list(rw),
            ro=list(ro),
            env=env or {},
            cwd=cwd,
            network=network,
            limits=limits,
            tail=tail_chars,
        )

    def _prlimit(self, limits: Limits | None) -> list[str]:
        lim = limits or self.limits
        args = ["prlimit"]
        for flag, value in (
            ("--cpu", lim.cpu_seconds),
            ("--as", lim.memory_bytes),
            ("--nproc", lim.processes),
            ("--fsize", lim.file_size_bytes),
        ):
            if value is not None:
                args.append(f"{flag}={value}")
        return [*args, "--nofile=1024", "--core=0", "--"] if shutil.which("prlimit") else []

    def _run_bwrap(
        self,
        argv: list[str],
        *,
        rw: list[Path],
        ro: list[Path],
        env: Mapping[str, str],
        cwd: Path,
        network: bool,
        limits: Limits | None = None,
        tail: int = _TAIL,
    ) -> SandboxResult:
        lim = limits or self.limits
        args = [self.bwrap, "--unshare-ipc", "--unshare-pid", "--unshare-uts", "--unshare-cgroup-try"]
        if not network:
            args.append("--unshare-net")
        if not self.privileged:
            args += (
                ["--unshare-user", "--disable-userns"]
                if _bwrap_knows("--disable-userns")
                else ["--unshare-user"]
            )
        args += ["--die-with-parent", "--new-session", "--clearenv", "--hostname", "sandbox"]
        for top in _SYSTEM_RO:
            if Path(top).is_dir():
                args += ["--ro-bind", top, top]
        args += _merged_usr()
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--perms", "1777", "--size", str(lim.tmp_bytes), "--tmpfs", "/tmp"]  # noqa: S108 - private tmpfs
        mounted = ["/usr", "/etc", "/proc", "/dev"]  # /tmp is a tmpfs: folders can be made in it
        created: set[str] = {"/tmp"}  # noqa: S108 - the sandbox's own tmpfs
        for path, flag in [*((p, "--ro-bind") for p in _interpreter_dirs()), *((p, "--ro-bind") for p in ro)]:
            args += _bind(path, flag, mounted, created)
        for path in rw:
            args += _bind(path, "--bind", mounted, created)
        args += ["--chdir", str(cwd)]
        for key, value in {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", **env}.items():  # noqa: S108
            args += ["--setenv", key, value]
        args += ["--", *self._prlimit(lim)]
        if self.privileged:
            uid = 65534 if self.uid is None else self.uid  # None only for the probe: nobody
            args += [
                "setpriv",
                f"--reuid={uid}",
                f"--regid={uid}",
                "--clear-groups",
                "--no-new-privs",
                "--inh-caps=-all",
                "--bounding-set=-all",
                "--",
            ]
        return self._execute(args + argv, {}, cwd, lim, True, tail)

    def _execute(
        self,
        argv: list[str],
        env: Mapping[str, str],
        cwd: Path,
        limits: Limits | None,
        sandboxed: bool,
        tail: int,
    ) -> SandboxResult:
        lim = limits or self.limits
        base_env = {"PATH": os.environ.get("PATH", os.defpath)} if not sandboxed else {}
        with tempfile.TemporaryDirectory(prefix="cadre-sbx-out-") as out:
            out_path, err_path = Path(out) / "stdout", Path(out) / "stderr"
            started = time.perf_counter()
            timed_out = False
            with out_path.open("wb") as fout, err_path.open("wb") as ferr:
                proc = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                    argv,
                    cwd=cwd if not sandboxed else None,
                    env={**base_env, **env},
                    stdin=subprocess.DEVNULL,
                    stdout=fout,
                    stderr=ferr,
                    start_new_session=True,
                )
                try:
                    returncode = proc.wait(timeout=lim.wall_seconds)
                except subprocess.TimeoutExpired:
                    timed_out = True
                    _kill_group(proc)
                    returncode = proc.wait()
            return SandboxResult(
                returncode=returncode,
                stdout=read_tail(out_path, tail),
                stderr=read_tail(err_path, tail),
                timed_out=timed_out,
                wall_seconds=time.perf_counter() - started,
                sandboxed=sandboxed,
            )

    def with_limits(self, **changes: object) -> Limits:
        """This sandbox's limits with some changed (e.g. more memory for an installer)."""
        return replace(self.limits, **changes)  # type: ignore[arg-type]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """Kill bwrap's process group; --die-with-parent then tears down the whole PID namespace."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _interpreter_dirs() -> list[Path]:
    """The running interpreter's prefixes (the service's venv and its base), bound read-only."""
    dirs = {
        Path(sys.prefix).resolve(),
        Path(sys.base_prefix).resolve(),
        Path(sys.executable).resolve().parent,
    }
    return sorted(d for d in dirs if not any(d.is_relative_to(s) for s in _SYSTEM_RO))


def _bind(path: Path, flag: str, mounted: list[str], created: set[str]) -> list[str]:
    """``flag path path``, creating missing parent folders world-traversable first.

    bwrap copies the mode of a source's parents (``/root`` is 0700): without
    the explicit ``--dir`` the unprivileged uid could not reach a bind under it.
    Parents inside an earlier bind exist already and are left alone.
    """
    path = path.resolve()
    args: list[str] = []
    for parent in reversed(path.parents):
        text = str(parent)
        if text == "/" or text in created or any(text.startswith(m + "/") or text == m for m in mounted):
            continue
        args += ["--perms", "0755", "--dir", text]
        created.add(text)
    mounted.append(str(path))
    return [*args, flag, str(path), str(path)]


_KNOWN: dict[str, bool] = {}


def _bwrap_knows(flag: str) -> bool:
    if flag not in _KNOWN:
        exe = shutil.which("bwrap")
        help_text = (
            subprocess.run([exe, "--help"], capture_output=True, text=True, check=False).stdout if exe else ""  # noqa: S603
        )
        _KNOWN[flag] = flag in help_text
    return _KNOWN[flag]
