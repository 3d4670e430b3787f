"""ruff findings: ``ruff check --fix --isolated --select <code>`` on the file's text, via stdin."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from shared.contract.protocol import Issue
from shared.tools.fixes.model import Candidate, Plan, Unfixable, map_line, rule_code

__all__ = ["ruff_plan", "ruff_rows", "run_ruff"]


def run_ruff(root: Path, rel: str, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    """ruff on ``text`` via stdin. Bytes in and out: text mode would turn CRLF into LF."""
    proc = subprocess.run(  # noqa: S603 - fixed argv from the current interpreter, no shell
        # -P: the workspace (cwd) is never on sys.path, so its own `ruff/` package cannot run here
        [sys.executable, "-P", "-m", "ruff", *args, "--isolated", "--no-cache", "--stdin-filename", rel, "-"],
        cwd=root,
        input=text.encode("utf-8"),
        capture_output=True,
        check=False,
    )
    return subprocess.CompletedProcess(
        proc.args,
        proc.returncode,
        proc.stdout.decode("utf-8", errors="replace"),
        proc.stderr.decode("utf-8", errors="replace"),
    )


def ruff_rows(root: Path, rel: str, text: str, code: str) -> set[int]:
    proc = run_ruff(root, rel, text, "check", "--select", code, "--output-format", "json", "--exit-zero")
    if proc.returncode != 0:
        raise Unfixable(f"ruff failed: {proc.stderr.strip()[-300:]}")
    return {d["location"]["row"] for d in json.loads(proc.stdout or "[]") if d.get("code") == code}


def ruff_plan(root: Path, rel: str, text: str, line: int | None, issue: Issue, passes: dict) -> Plan:
    code = rule_code(issue)[1]
    if not re.fullmatch(r"[A-Z]+[0-9]+", code):
        raise Unfixable(f"ruff:{code} is not a rule ruff can fix")
    if line is None or line not in ruff_rows(root, rel, text, code):
        if (rel, code) in passes:
            return Plan(note=f"{issue.rule} fixed by the same ruff pass as {passes[rel, code]}")
        raise Unfixable(f"ruff no longer reports {code} at this line")
    proc = run_ruff(root, rel, text, "check", "--fix", "--select", code, "--exit-zero")
    fixed = proc.stdout
    mapped = map_line(text, fixed, line)
    if (
        proc.returncode != 0
        or fixed == text
        or (mapped is not None and mapped in ruff_rows(root, rel, fixed, code))
    ):
        raise Unfixable(f"ruff has no safe automatic fix for {code} here")
    passes[rel, code] = issue.id
    return Plan([Candidate(fixed, f"ruff --fix {code}: {issue.message}", kind="lint-fix")])
