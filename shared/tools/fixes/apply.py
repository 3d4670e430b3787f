"""The driver: group findings by file, plan and apply each rewrite, gate changes on ``verify``.

A file's fixes are first tried together; when the tests break, each fix is
retried on its own and one that still breaks tests is reverted, reported as
refused and disputed with concern ``correctness`` (unless ``must_fix``).

Only what a fix needs changes: the file is never reformatted, and its bytes
keep their encoding (PEP 263 cookie or BOM) and line endings (CRLF stays CRLF).
"""

from __future__ import annotations

import io
import logging
import tokenize
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from shared.contract.protocol import Change, Dispute, Issue
from shared.tools.fixes.envnames import EnvNames, existing_env_names
from shared.tools.fixes.lint import ruff_plan, ruff_rows, run_ruff
from shared.tools.fixes.model import FixOutcome, Plan, Site, Unfixable, Verify, file_diff, map_line, rule_code
from shared.tools.fixes.rules import BANDIT_REWRITES
from shared.tools.fixes.tree import Tree

__all__ = ["apply_fixes"]

logger = logging.getLogger(__name__)


def _no_rewrite(tool: str, code: str) -> str:
    if tool == "radon":
        return (
            "lowering cyclomatic complexity means restructuring the function; the builtin developer "
            "does not refactor (an LLM developer can)"
        )
    return f"no automatic rewrite for {tool} {code}: it needs a change by hand or an LLM developer"


@dataclass
class _File:
    root: Path
    rel: str
    original: str
    current: str
    must_fix: set[str]
    env: EnvNames
    encoding: str = "utf-8"
    ruff_passes: dict[tuple[str, str], str] = field(default_factory=dict)
    sorted: bool | None = None
    formatted: bool = False

    def plan(self, issue: Issue) -> Plan:
        tool, code = rule_code(issue)
        line = map_line(self.original, self.current, issue.line) if issue.line else None
        try:
            if tool == "ruff":
                return ruff_plan(self.root, self.rel, self.current, line, issue, self.ruff_passes)
            rewrite = BANDIT_REWRITES.get(code) if tool == "bandit" else None
            if rewrite is None:
                return Plan(unfixable=_no_rewrite(tool, code))
            if line is None:
                return Plan(unfixable="the finding's line is gone (an earlier fix changed it)")
            site = Site(self.rel, line, issue, issue.id in self.must_fix, self.root, self.env)
            plan = rewrite(site, Tree(self.current))
        except Unfixable as exc:
            return Plan(unfixable=str(exc))
        plan.candidates = [replace(c, text=self.tidy(c.text)) for c in plan.candidates]
        return plan

    def tidy(self, text: str) -> str:
        """Keep a file that was import-sorted / ruff-formatted that way after a rewrite."""
        if self.sorted is None:
            self.sorted = not ruff_rows(self.root, self.rel, self.original, "I001")
            proc = run_ruff(self.root, self.rel, self.original, "format", "--check")
            self.formatted = proc.returncode == 0
        if self.sorted:
            proc = run_ruff(self.root, self.rel, text, "check", "--fix", "--select", "I001", "--exit-zero")
            text = proc.stdout if proc.returncode == 0 and proc.stdout else text
        if self.formatted:
            proc = run_ruff(self.root, self.rel, text, "format")
            text = proc.stdout if proc.returncode == 0 and proc.stdout else text
        return text

    def write(self, text: str) -> None:
        (self.root / self.rel).write_bytes(text.encode(self.encoding))


def _pass(
    f: _File, issues: list[Issue], check: Verify | None, out: FixOutcome, stop: Callable[[], bool]
) -> None:
    """Plan and apply each finding in turn; with ``check``, keep only changes that pass it."""
    for issue in issues:
        if stop():
            return
        plan = f.plan(issue)
        if plan.unfixable is not None:
            out.unfixable.append((issue, plan.unfixable))
        if plan.dispute is not None:
            out.disputes.append(plan.dispute)
        if plan.note is not None:
            out.changes.append(
                Change(file=f.rel, kind="lint-fix", description=plan.note, diff="", addresses=issue.id)
            )
        if not plan.candidates:
            continue
        reason = None
        for cand in plan.candidates:
            if check is not None:
                f.write(cand.text)
                reason = check()
                if reason is not None:
                    f.write(f.current)
                    continue
            diff = file_diff(f.rel, f.current, cand.text)
            out.changes.append(
                Change(
                    file=f.rel, kind=cand.kind, description=cand.description, diff=diff, addresses=issue.id
                )
            )
            out.configure += cand.settings
            out.follow_ups += cand.follow_ups
            f.current = cand.text
            break
        else:
            first = plan.candidates[0]
            out.refused.append(
                Change(
                    file=f.rel,
                    kind="refused",
                    description=f"{first.description}; refused: {reason}",
                    diff=file_diff(f.rel, f.current, first.text),
                    addresses=issue.id,
                )
            )
            if issue.id not in f.must_fix:
                argument = (
                    f"The automatic fix for {issue.rule} at {f.rel}:{issue.line} ({first.description}) "
                    f"breaks tests that passed before: {reason}. Keeping the tests green needs a change "
                    "the automatic fix cannot make."
                )
                out.disputes.append(Dispute(issue_id=issue.id, argument=argument, concern="correctness"))


def _fix_file(
    f: _File, issues: list[Issue], verify: Verify | None, out: FixOutcome, stop: Callable[[], bool]
) -> None:
    """All of a file's fixes together, checked once; one by one (each checked) only if that fails."""
    trial = FixOutcome()
    _pass(f, issues, None, trial, stop)
    edits = sum(1 for c in trial.changes if c.diff)
    if verify is None or edits == 0:
        together_ok = True
    elif edits == 1:
        together_ok = False  # checking it alone below costs the same test run
    else:
        f.write(f.current)
        together_ok = verify() is None
        if not together_ok:
            logger.info("fixes of %s break the tests together; trying them one by one", f.rel)
    if together_ok:
        if f.current != f.original:
            f.write(f.current)
        _merge(out, trial)
    else:
        f.write(f.original)
        f.current, f.ruff_passes = f.original, {}
        _pass(f, issues, verify, out, stop)


def _resolve(root: Path, name: str | None) -> str | None:
    if not name:
        return None
    path = Path(name)
    path = (path if path.is_absolute() else root / path).resolve()
    if not path.is_relative_to(root) or not path.is_file():
        return None
    return path.relative_to(root).as_posix()


def apply_fixes(
    workspace: Path,
    findings: list[Issue],
    *,
    must_fix: set[str] | frozenset[str] = frozenset(),
    waived: set[str] | frozenset[str] = frozenset(),
    verify: Verify | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> FixOutcome:
    """Fix what can be fixed among ``findings`` in ``workspace`` (edited in place).

    ``verify`` is called after each candidate change (None = keep it, a string =
    the reason to revert it); ``should_stop`` is polled between findings.
    """
    root = workspace.resolve()
    stop = should_stop or (lambda: False)
    out = FixOutcome()
    env = EnvNames(existing_env_names([_read(p)[0] for p in sorted(root.rglob("*.py")) if p.is_file()]))
    by_file: dict[str, list[Issue]] = {}
    for issue in findings:
        if issue.id in waived:
            out.waived.append(issue.id)
            continue
        rel = _resolve(root, issue.file)
        if rel is None:
            where = (
                f"file {issue.file!r} is not in the workspace" if issue.file else "the finding names no file"
            )
            out.unfixable.append((issue, where))
            continue
        by_file.setdefault(rel, []).append(issue)
    for rel, issues in sorted(by_file.items()):
        if stop():
            break
        issues.sort(key=lambda i: (i.line or 0, i.rule, i.id))
        text, encoding = _read(root / rel)
        if not encoding:
            out.unfixable.extend((i, "the file does not decode with its declared encoding") for i in issues)
            continue
        _fix_file(_File(root, rel, text, text, set(must_fix), env, encoding), issues, verify, out, stop)
    logger.info(
        "fixes applied=%d refused=%d unfixable=%d disputed=%d waived=%d",
        len(out.fixed_ids),
        len(out.refused),
        len(out.unfixable),
        len(out.disputes),
        len(out.waived),
    )
    return out


def _read(path: Path) -> tuple[str, str]:
    """The file's text and encoding (PEP 263 cookie, BOM, else UTF-8); ("", "") if it does not decode."""
    raw = path.read_bytes()
    try:
        encoding, _ = tokenize.detect_encoding(io.BytesIO(raw).readline)
        return raw.decode(encoding), encoding
    except (SyntaxError, LookupError, UnicodeDecodeError):
        return "", ""


def _merge(out: FixOutcome, more: FixOutcome) -> None:
    out.changes += more.changes
    out.refused += more.refused
    out.unfixable += more.unfixable
    out.disputes += more.disputes
    out.configure += more.configure
    out.follow_ups += more.follow_ups
