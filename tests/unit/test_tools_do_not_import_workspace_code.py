"""Static tools look at workspace code and never import it.

``python -m bandit`` with ``cwd=workspace`` would put the workspace first on
``sys.path``: a workspace carrying its own ``bandit/`` or ``ruff/`` package ran
unsandboxed, with the service's secrets. The tools now run with ``-P``.
"""

from __future__ import annotations

from pathlib import Path

from shared.tools.analysis import analyze
from shared.tools.fixes.lint import run_ruff


def _shadow(ws: Path, module: str, canary: Path) -> None:
    pkg = ws / module
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text(f"open({str(canary)!r}, 'w').write('ran')\n")
    (pkg / "__main__.py").write_text(f"open({str(canary)!r}, 'w').write('ran')\n")


def test_analysis_never_runs_a_workspace_package_named_like_its_tools(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    canary = tmp_path / "canary"
    for module in ("bandit", "ruff", "radon"):
        _shadow(ws, module, canary)
    (ws / "app.py").write_text("import subprocess\nsubprocess.run('ls', shell=True)\n")
    issues = analyze(ws)
    assert not canary.exists()
    assert any(i.rule.endswith("B602") for i in issues), [i.rule for i in issues]


def test_ruff_fixes_never_run_a_workspace_package_named_ruff(tmp_path: Path) -> None:
    ws = tmp_path / "ws"
    canary = tmp_path / "canary"
    _shadow(ws, "ruff", canary)
    proc = run_ruff(ws, "app.py", "import os\n", "check", "--select", "F401", "--fix")
    assert not canary.exists() and proc.returncode == 0 and proc.stdout == ""
