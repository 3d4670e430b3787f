"""The SDK alone: a fresh venv with only Cadre's base install submits a task and reads its typed result.

`pip install cadre` (no extras) brings nats-py, msgspec and pydantic-settings and nothing of
the services (no bandit, ruff, libcst, openai, aiohttp, typer...). The venv is built from
`requirements/sdk.txt`, the locked base, and the project from a copy of its source.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from shared.bus.core import Bus
from shared.client.cli.settings import StackSettings
from shared.embedded.launcher import Stack

ROOT = Path(__file__).resolve().parents[2]
ECHO = "tests.brains:EchoBrain"

_SCRIPT = textwrap.dedent(
    """
    import asyncio, importlib.util, sys
    from shared.client import CadreClient
    from shared.contract.protocol import FinalResult, TaskBody, TaskSubmission
    from shared.client.settings import ClientSettings

    heavy = [m for m in ("typer", "rich", "aiohttp", "bandit", "ruff", "libcst", "openai", "yaml")
             if importlib.util.find_spec(m) is not None]
    assert not heavy, f"the base install pulled in {heavy}"

    async def main() -> None:
        settings = ClientSettings(nats_url=sys.argv[1], prefix=sys.argv[2])
        async with CadreClient.connect(settings, "sdk-only") as client:
            task = TaskSubmission(message_id="sdk-base-1", task_id="sdk-base-1", task_type="research",
                                  task=TaskBody(description="Research JWT refresh token rotation"))
            task_id = await client.submit(task)
            result = await client.result(task_id, timeout=120)
            assert isinstance(result, FinalResult), type(result)
            print(f"RESULT {type(result).__name__} {result.task_id} {result.status}")

    asyncio.run(main())
    """
)


@pytest.fixture(scope="module")
def sdk_python(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the locked base requirements and Cadre built from a source copy."""
    where = tmp_path_factory.mktemp("sdk")
    src = where / "src"
    src.mkdir()
    for name in ("shared", "services"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    venv = where / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    pip = [str(py), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
    lock = ROOT / "requirements" / "sdk.txt"
    subprocess.run([*pip, "--require-hashes", "--no-deps", "-r", str(lock)], check=True, timeout=600)
    subprocess.run([*pip, "--no-deps", "--no-build-isolation", str(src)], check=True, timeout=600)
    subprocess.run([str(py), "-m", "pip", "check"], check=True)
    return py


async def test_the_base_install_alone_submits_a_task_and_reads_its_typed_result(
    sdk_python: Path, bus: Bus, stack: Stack, settings: StackSettings, tmp_path: Path
) -> None:
    del bus  # its fixture made the streams, as `cadre up` or the bootstrap job does
    stack.add("orchestrator")
    stack.add("researcher", brain=ECHO)
    script = tmp_path / "sdk_only.py"
    script.write_text(_SCRIPT)
    # run from an empty folder: nothing of the checkout is importable, only what the venv installed
    ran = subprocess.run(
        [str(sdk_python), str(script), settings.nats_url, settings.prefix],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "RESULT FinalResult sdk-base-1 completed" in ran.stdout
