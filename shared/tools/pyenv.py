"""The workspace's own Python environment: what the project declares, installed by uv, cached.

``declared(root)`` reads the dependencies a project declares, without running
any of its code: ``pyproject.toml`` (``[project].dependencies``, the
``test``/``tests``/``testing``/``dev`` extras and dependency groups),
Poetry's ``[tool.poetry.dependencies]`` and test/dev groups (translated by
``shared.tools.poetry_deps``), ``requirements*.txt`` (and ``requirements/*.txt``, following ``-r`` inside
the workspace) and ``setup.cfg`` (``install_requires`` and the same extras).
Only plain index requirements are kept: options (``-i``, ``-e``, ...) and
direct URLs are ignored and listed, so a workspace cannot point the installer
somewhere else. ``setup.py`` is never executed.

``EnvBuilder.ensure`` gives the interpreter to run the tests with: the
service's own (which has pytest and coverage) when nothing is declared,
otherwise a virtual environment under ``<cache>/envs/<hash>`` built with uv
*inside the sandbox* (network allowed for the install only; writable: that
environment and the sandbox uid's own uv cache) from the declared requirements
plus pytest and coverage. The hash covers the requirements, the interpreter and
this module's format, so the next step and the next task with the same
declarations reuse it.

Installing runs no workspace-chosen code with the network: by default uv
installs **wheels only** (``--only-binary :all:``), so uv itself is the only
program that talks to the index, and a wheel is unpacked, never executed. A
dependency that exists only as a source distribution is refused with a message
naming it and ``CADRE_ENV_ALLOW_BUILDS``; with that setting, uv builds it, and
its build code runs in the install sandbox, which has the host's network
(logged as a warning on every such install).
"""

from __future__ import annotations

import configparser
import fcntl
import hashlib
import importlib.metadata
import json
import logging
import os
import re
import shutil
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from shared.contract.errors import CadreError
from shared.tools.poetry_deps import poetry_requirements
from shared.tools.sandbox import Sandbox, SandboxUnavailable

__all__ = ["Declared", "EnvBuilder", "EnvUnavailable", "PythonEnv", "declared", "satisfied_here"]

logger = logging.getLogger(__name__)

ENV_FORMAT = "2"  # 2: wheels only unless builds are allowed
RUNNER_PACKAGES = ("pytest", "coverage")
EXTRA_NAMES = ("test", "tests", "testing", "dev")
_MAX_FILE = 256 * 1024
_BASE_PYTHON: str = getattr(sys, "_base_executable", sys.executable)  # the interpreter under a venv
_MAX_REQS = 300
# the machine's network settings for the installer (no credentials of Cadre's own)
_NET_ENV = ("SSL_CERT_FILE", "SSL_CERT_DIR", "HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "UV_DEFAULT_INDEX")
# uv: "hint: Wheels are required for `name` because building from source is disabled ..."
_NEEDS_BUILD = re.compile(r"[Ww]heels are required for `([^`]+)`")


class EnvUnavailable(CadreError):
    """The project's environment could not be made; ``reason`` is one line for the trace."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


@dataclass(frozen=True)
class Declared:
    """The requirements a project declares (normalised, sorted) and where they came from."""

    requirements: tuple[str, ...]
    sources: tuple[str, ...]
    ignored: tuple[str, ...] = ()

    @property
    def digest(self) -> str:
        """Cache key: requirements + interpreter + format (same declarations -> same environment)."""
        blob = json.dumps(
            {"format": ENV_FORMAT, "python": sys.version, "exe": _BASE_PYTHON, "reqs": self.requirements}
        )
        return hashlib.sha256(blob.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class PythonEnv:
    """The interpreter to run a workspace's tests with; ``root`` is a venv to bind read-only."""

    python: Path
    root: Path | None
    description: str
    note: str = ""


def satisfied_here(requirements: tuple[str, ...]) -> bool:
    """Whether the service's own interpreter has every requirement installed at an accepted version."""
    for text in requirements:
        req = Requirement(text)
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            version = importlib.metadata.version(req.name)
        except importlib.metadata.PackageNotFoundError:
            return False
        if not req.specifier.contains(version, prereleases=True):
            return False
    return True


def _read(path: Path) -> str | None:
    if not path.is_file() or path.is_symlink() or path.stat().st_size > _MAX_FILE:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


class _Collector:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.reqs: dict[str, str] = {}
        self.sources: list[str] = []
        self.ignored: list[str] = []
        self.own_names: set[str] = set()

    def add(self, text: str, where: str) -> None:
        text = text.strip()
        try:
            req = Requirement(text)
        except InvalidRequirement:
            self.ignored.append(f"{where}: not a requirement: {text[:80]}")
            return
        if req.url:
            self.ignored.append(f"{where}: direct URL not installed: {req.name}")
            return
        name = canonicalize_name(req.name)
        if name in self.own_names:
            return
        if len(self.reqs) >= _MAX_REQS:
            self.ignored.append(f"{where}: more than {_MAX_REQS} requirements")
            return
        self.reqs[f"{name}|{req}"] = str(req)

    def pyproject(self) -> None:
        text = _read(self.root / "pyproject.toml")
        if text is None:
            return
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            self.ignored.append(f"pyproject.toml: unreadable ({exc})")
            return
        project: dict[str, Any] = data["project"] if isinstance(data.get("project"), dict) else {}
        if isinstance(project.get("name"), str):
            self.own_names.add(canonicalize_name(project["name"]))
        groups: list[object] = [project.get("dependencies", [])]
        extras = project.get("optional-dependencies", {})
        dep_groups = data.get("dependency-groups", {})
        for table in (extras, dep_groups):
            if isinstance(table, dict):
                groups += [table.get(n, []) for n in EXTRA_NAMES]
        found = False
        poetry, skipped = poetry_requirements(data)
        self.ignored += skipped
        for req in poetry:
            self.add(req, "pyproject.toml [tool.poetry]")
            found = True
        for group in groups:
            for entry in group if isinstance(group, list) else []:
                if isinstance(
                    entry, str
                ):  # dicts are {include-group = ...}: the named groups are read anyway
                    self.add(entry, "pyproject.toml")
                    found = True
        if found:
            self.sources.append("pyproject.toml")

    def setup_cfg(self) -> None:
        text = _read(self.root / "setup.cfg")
        if text is None:
            return
        parser = configparser.ConfigParser(interpolation=None)
        try:
            parser.read_string(text)
        except configparser.Error as exc:
            self.ignored.append(f"setup.cfg: unreadable ({exc})")
            return
        values = [parser.get("options", "install_requires", fallback="")]
        values += [parser.get("options.extras_require", n, fallback="") for n in EXTRA_NAMES]
        lines = [ln.split("#")[0].strip() for v in values for ln in v.splitlines()]
        for line in filter(None, lines):
            self.add(line, "setup.cfg")
        if any(lines):
            self.sources.append("setup.cfg")

    def requirements(self, path: Path, depth: int = 0) -> None:
        rel = path.relative_to(self.root).as_posix()
        text = _read(path)
        if text is None or rel in self.sources or depth > 3:
            return
        self.sources.append(rel)
        for raw in text.splitlines():
            line = re.sub(r"(^|\s)#.*$", "", raw).strip()
            if not line:
                continue
            if line.startswith(("-r ", "--requirement")):
                target = (path.parent / line.split(maxsplit=1)[-1].split("=", 1)[-1].strip()).resolve()
                if target.is_relative_to(self.root):
                    self.requirements(target, depth + 1)
                else:
                    self.ignored.append(f"{rel}: -r outside the workspace")
            elif line.startswith("-"):
                self.ignored.append(f"{rel}: option not honoured: {line.split()[0]}")
            else:
                self.add(line, rel)


def declared(root: Path) -> Declared:
    """What the project at ``root`` declares it needs (no project code runs)."""
    root = root.resolve()
    col = _Collector(root)
    col.pyproject()
    col.setup_cfg()
    files = sorted(root.glob("requirements*.txt")) + sorted(root.glob("requirements/*.txt"))
    for path in files:
        col.requirements(path)
    reqs = tuple(sorted(col.reqs.values(), key=str.lower))
    return Declared(reqs, tuple(col.sources), tuple(col.ignored))


class EnvBuilder:
    """Builds (once per dependency hash) and hands out the environment a workspace's tests run in."""

    def __init__(
        self, sandbox: Sandbox, cache_dir: Path, *, install: bool = True, allow_builds: bool = False
    ) -> None:
        self.sandbox = sandbox
        self.cache_dir = cache_dir.resolve()
        self.install = install
        self.allow_builds = allow_builds

    def ensure(self, decl: Declared) -> PythonEnv:
        """The environment for ``decl``; ``EnvUnavailable`` with a one-line reason when it cannot be made.

        When the project's environment cannot be built (installing is off, the
        index cannot be reached) but the service's own interpreter already
        satisfies every declared requirement, that interpreter is used instead
        and ``PythonEnv.note`` says so (offline development, the example).
        """
        if not decl.requirements:
            return PythonEnv(Path(sys.executable), None, "the service's interpreter (nothing declared)")
        names = ", ".join(decl.requirements[:5]) + (" ..." if len(decl.requirements) > 5 else "")
        env_dir = self.cache_dir / "envs" / decl.digest
        python = env_dir / "venv" / "bin" / "python"
        if (env_dir / ".complete").is_file():
            return PythonEnv(python, env_dir, f"cached environment {decl.digest} ({names})")
        try:
            self._build_locked(decl, env_dir, names)
        except EnvUnavailable as exc:
            if not satisfied_here(decl.requirements):
                raise
            note = f"{exc.reason}; the service's own environment satisfies every declared requirement: used instead"
            logger.warning("environment fallback digest=%s: %s", decl.digest, note)
            return PythonEnv(Path(sys.executable), None, "the service's interpreter", note)
        return PythonEnv(python, env_dir, f"environment {decl.digest} built from {', '.join(decl.sources)}")

    def _build_locked(self, decl: Declared, env_dir: Path, names: str) -> None:
        if not self.install:
            raise EnvUnavailable(
                f"the project declares dependencies ({names}) and installing is off (CADRE_ENV_INSTALL=false)"
            )
        uv = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
        if uv is None:
            raise EnvUnavailable("the installer 'uv' is not installed (pip install uv)")
        (self.cache_dir / "envs").mkdir(parents=True, exist_ok=True)
        with (self.cache_dir / "envs" / f"{decl.digest}.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one build per hash; others wait and reuse it
            if not (env_dir / ".complete").is_file():
                self._build(uv, decl, env_dir)

    def _build(self, uv: str, decl: Declared, env_dir: Path) -> None:
        shutil.rmtree(env_dir, ignore_errors=True)
        env_dir.mkdir(parents=True)
        reqs = env_dir / "requirements.in"
        reqs.write_text("\n".join([*decl.requirements, *RUNNER_PACKAGES]) + "\n", encoding="utf-8")
        try:
            with self.sandbox.slot() as box:
                self._install(box, uv, decl, env_dir, reqs)
        except SandboxUnavailable as exc:
            shutil.rmtree(env_dir, ignore_errors=True)
            raise EnvUnavailable(f"installing needs the sandbox: {exc.reason}") from exc
        except BaseException:
            shutil.rmtree(env_dir, ignore_errors=True)
            raise
        # written last: a half-built environment is never reused
        (env_dir / ".complete").write_text(json.dumps(list(decl.requirements)), encoding="utf-8")
        logger.info("environment built digest=%s requirements=%d", decl.digest, len(decl.requirements))

    def _install(self, box: Sandbox, uv: str, decl: Declared, env_dir: Path, reqs: Path) -> None:
        if self.allow_builds:
            # build code could poison a shared cache for later installs: this build gets its own, thrown away
            uv_cache = env_dir / "uv-cache"
        else:
            # each sandbox uid has its own uv cache: files one uid wrote, another could not update
            uv_cache = self.cache_dir / "uv-cache" / (str(box.uid) if box.uid is not None else "shared")
        uv_cache.mkdir(parents=True, exist_ok=True)
        box.prepare(env_dir, uv_cache)
        env = {k: os.environ[k] for k in _NET_ENV if k in os.environ}
        env.update(
            UV_CACHE_DIR=str(uv_cache), UV_NO_CONFIG="1", UV_PYTHON_DOWNLOADS="never", UV_NO_PROGRESS="1"
        )
        # the system trust store (read-only /etc): a deployment's own CA, e.g. its proxy's, is honoured
        env.update(UV_SYSTEM_CERTS="1", UV_NATIVE_TLS="1")
        install = [uv, "pip", "install", "--quiet", "--python", str(env_dir / "venv" / "bin" / "python")]
        if self.allow_builds:
            env["UV_LINK_MODE"] = "copy"  # the environment keeps no links into the thrown-away cache
            logger.warning(
                "environment %s: building dependencies without a wheel is allowed (CADRE_ENV_ALLOW_BUILDS=true):"
                " their build code runs in the install sandbox WITH the host's network (no credentials,"
                " writes only to the environment and a uv cache of its own, deleted afterwards)",
                decl.digest,
            )
        else:
            install += ["--only-binary", ":all:"]  # no build code runs: uv alone uses the network
        limits = box.with_limits(memory_bytes=None, cpu_seconds=None, wall_seconds=600.0)
        base = Path(_BASE_PYTHON).resolve()
        steps = [
            ([uv, "venv", "--quiet", "--python", str(base), str(env_dir / "venv")], False),
            ([*install, "-r", str(reqs)], True),
        ]
        for argv, network in steps:
            res = box.run(argv, cwd=env_dir, rw=[env_dir, uv_cache], env=env, network=network, limits=limits)
            if res.returncode != 0 or res.timed_out:
                raise EnvUnavailable(self._failure(res.output, res.returncode))
        if self.allow_builds:
            shutil.rmtree(uv_cache, ignore_errors=True)

    def _failure(self, output: str, returncode: int) -> str:
        """One line: which dependency needs a build (and the setting), else uv's own reason."""
        needs = sorted(set(_NEEDS_BUILD.findall(output)))
        if needs and not self.allow_builds:
            has, it = ("has", "it") if len(needs) == 1 else ("have", "them")
            return (
                f"the declared dependencies could not be installed: {', '.join(needs)} {has} no wheel for this"
                f" platform and building from source is off (CADRE_ENV_ALLOW_BUILDS=true builds {it} in the"
                " install sandbox, which has the network)"
            )
        lines = [ln.strip(" ×╰─▶│") for ln in output.splitlines() if ln.strip(" ×╰─▶│")]
        detail = " ".join(lines)[-400:] or f"exit {returncode}"
        return f"the declared dependencies could not be installed: {detail}"
