"""Static analysis of a code workspace, turned into ranked issues, a score and a verdict.

``analyze`` runs three real tools from the current interpreter's environment
(``sys.executable -m ...``, never whatever is on PATH):

- **bandit** (security) on every Python file that is not test code, ignoring
  ``# nosec`` (a security reviewer does not trust the author's suppressions).
  Test code is ``test_*.py``, ``*_test.py``, ``tests.py``, ``conftest.py``, and a
  file under a ``tests``/``test`` folder that holds tests or fixtures; any other
  file there (a script, a scanner) is reviewed like the rest. B404 and B603 are
  skipped: they flag every use of ``subprocess``, even the safe form.
- **ruff** (quality) with ``--isolated`` (the workspace is judged on its own, not
  by its own config) and rules E4/E7/E9, F, W, B, PERF on every Python file.
  ``F401`` on an import of the package's own modules in ``__init__.py`` is a
  re-export, not a finding.
- **radon** (complexity) on every Python file: a function with cyclomatic
  complexity above 10 is a finding.

Mapping: bandit keeps its severity, concern ``security``, except a hard-coded
secret whose name says it is a key or secret (``SECRET_KEY``, ``jwt_secret``,
``api_key``): MEDIUM, since whoever reads the code can sign tokens. Ruff
F-codes are MEDIUM, other codes LOW; F and B are ``correctness``, PERF
``performance``, E/W ``style``; a syntax error is HIGH ``correctness``.
Complexity above 15 is MEDIUM, above 10 LOW, concern ``style``. Issue ids are
``sha1(tool, rule, file, normalised source line)[:12]``: line numbers shift
when code above is fixed, so they are not part of the id.

The score, the blocking rule and the verdict are in ``shared.tools.scoring``
(re-exported here).
Everything is deterministic: same files in, same issues and score out.
"""

from __future__ import annotations

import ast
import hashlib
import json
import logging
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from radon.visitors import Class, ComplexityVisitor, Function

from shared.contract.errors import ToolFailed
from shared.contract.protocol import Concern, Issue, Severity
from shared.contract.workspace import SKIP_DIRS
from shared.tools.scoring import (
    CORRECTNESS_CAP,
    COVERAGE_PENALTY,
    COVERAGE_TARGET,
    LOW_CAP,
    STYLE_CAP,
    TESTS_FAILED_PENALTY,
    WEIGHTS,
    blocking,
    blocks,
    score,
    verdict,
)

__all__ = [
    "WEIGHTS",
    "LOW_CAP",
    "CORRECTNESS_CAP",
    "STYLE_CAP",
    "blocking",
    "blocks",
    "TESTS_FAILED_PENALTY",
    "COVERAGE_PENALTY",
    "COVERAGE_TARGET",
    "analyze",
    "python_files",
    "is_test_file",
    "radon_functions",
    "score",
    "verdict",
]

logger = logging.getLogger(__name__)

COMPLEXITY_LOW = 10
COMPLEXITY_MEDIUM = 15

_SEVERITY_RANK = {"HIGH": 0, "MEDIUM": 1, "LOW": 2}
_RUFF_SELECT = "E4,E7,E9,F,W,B,PERF"
_BANDIT_SKIP = "B404,B603"
_EXTRA_SKIP_DIRS = frozenset({".tox", ".nox", ".eggs", "site-packages"})
_CHUNK = 400  # files per tool invocation (keeps command lines short)

# what to do about the bandit findings a web service meets most often
_BANDIT_ADVICE = {
    "B105": "Read secrets from the environment or a secret store, never from a literal in the code.",
    "B106": "Read secrets from the environment or a secret store, never from a literal in the code.",
    "B107": "Do not give secrets literal default values; require them from configuration.",
    "B108": "Use tempfile.mkdtemp()/NamedTemporaryFile instead of a fixed path under /tmp.",
    "B113": "Pass timeout= to every HTTP request.",
    "B301": "Do not unpickle untrusted data; use JSON or msgspec.",
    "B303": "Use SHA-256 or better; for passwords use hashlib.scrypt/pbkdf2_hmac, bcrypt or argon2.",
    "B307": "Use ast.literal_eval or a parser instead of eval().",
    "B311": "Use the secrets module (secrets.token_urlsafe, secrets.choice) for tokens.",
    "B324": (
        "For passwords use a slow salted KDF (hashlib.scrypt, hashlib.pbkdf2_hmac, bcrypt, argon2); "
        "for non-security checksums pass usedforsecurity=False."
    ),
    "B501": "Keep TLS certificate verification on (verify=True).",
    "B506": "Use yaml.safe_load (or Loader=yaml.SafeLoader).",
    "B602": "Pass an argument list with shell=False (or use a library call such as shutil).",
    "B604": "Pass an argument list with shell=False.",
    "B605": "Use subprocess.run with an argument list instead of a shell.",
    "B608": "Use parameterised queries instead of building SQL from strings.",
}


_TEST_NAMES = re.compile(r"^(test_.*|.*_test|tests|conftest)\.py$")
# what makes a file under a tests/ folder test code: test functions, test classes or fixtures
_TEST_CODE = re.compile(
    r"^\s*(?:async\s+)?def\s+test|^\s*class\s+Test|^\s*(?:import|from)\s+(?:pytest|unittest)\b|@pytest\.",
    re.MULTILINE,
)


def is_test_file(rel: Path, text: str | None = None) -> bool:
    """Test code: ``test_*.py``, ``*_test.py``, ``tests.py`` (Django), ``conftest.py``, or a file
    under a ``tests``/``test`` folder whose ``text`` holds tests or fixtures.

    A script that merely lives in a tests folder (a scanner, a data generator) is
    not test code: it runs with real effects, so it gets the security review.
    Without ``text``, any file under such a folder counts as test code.
    """
    if _TEST_NAMES.match(rel.name):
        return True
    if not any(part in ("tests", "test") for part in rel.parts[:-1]):
        return False
    return text is None or bool(_TEST_CODE.search(text))


def python_files(workspace: Path) -> list[Path]:
    """Every Python file of the workspace (relative, sorted), skipping caches, VCS and venvs."""
    root = workspace.resolve()
    skip = SKIP_DIRS | _EXTRA_SKIP_DIRS
    out = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in skip for part in rel.parts[:-1]) or not path.is_file():
            continue
        out.append(rel)
    return out


def _run_tool(args: list[str], root: Path, ok_codes: tuple[int, ...]) -> str:
    proc = subprocess.run(  # fixed argv from this interpreter, no shell
        [sys.executable, "-P", "-m", *args], cwd=root, capture_output=True, text=True, check=False
    )
    if proc.returncode not in ok_codes:
        detail = (proc.stderr or proc.stdout).strip()[-800:]
        raise ToolFailed(args[0], f"exit {proc.returncode}: {detail}")
    return proc.stdout


def _chunks(files: list[Path]) -> Iterator[list[str]]:
    for i in range(0, len(files), _CHUNK):
        yield [f.as_posix() for f in files[i : i + _CHUNK]]


class _Sources:
    """Source lines of workspace files, read once, for ids and complexity."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._lines: dict[str, list[str]] = {}

    def text(self, rel: str) -> str:
        if rel not in self._lines:
            raw = (self.root / rel).read_text(encoding="utf-8", errors="replace")
            self._lines[rel] = raw.splitlines()
        return "\n".join(self._lines[rel])

    def line(self, rel: str, lineno: int | None) -> str:
        self.text(rel)
        lines = self._lines[rel]
        if lineno is None or not 1 <= lineno <= len(lines):
            return ""
        return " ".join(lines[lineno - 1].split())


def _rel(root: Path, name: str) -> str:
    path = Path(name)
    path = path if path.is_absolute() else root / path
    return path.resolve().relative_to(root).as_posix()


# A finding before it gets its id: (tool, rule, severity, concern, file, line, message, recommendation)
_Raw = tuple[str, str, Severity, Concern, str, int | None, str, str]


_KEY_NAME = re.compile(r"secret|jwt|signing|api_?key|private_?key|_key\b|\bkey\b", re.IGNORECASE)


def _bandit_severity(test_id: str, severity: Severity, line: str) -> Severity:
    """Bandit's severity, but a hard-coded key or secret (bandit says LOW) is MEDIUM."""
    left = line.split("=", 1)[0] if test_id == "B105" else line
    if test_id in ("B105", "B106") and _KEY_NAME.search(left):
        return "MEDIUM"
    return severity


def _bandit(root: Path, files: list[Path], sources: _Sources) -> Iterator[_Raw]:
    targets = [f for f in files if not is_test_file(f, sources.text(f.as_posix()))]
    for chunk in _chunks(targets):
        out = _run_tool(
            ["bandit", "-q", "-f", "json", "--ignore-nosec", "-s", _BANDIT_SKIP, *chunk], root, (0, 1)
        )
        report: dict[str, Any] = json.loads(out)
        for err in report.get("errors", []):
            logger.info("bandit could not scan file=%s reason=%s", err.get("filename"), err.get("reason"))
        for r in report.get("results", []):
            test_id = r["test_id"]
            advice = _BANDIT_ADVICE.get(test_id, "")
            more = r.get("more_info", "")
            recommendation = f"{advice} See {more}".strip() if more else advice
            rel = _rel(root, r["filename"])
            line = r.get("line_number")
            yield (
                "bandit",
                f"bandit:{test_id}",
                _bandit_severity(test_id, r["issue_severity"], sources.line(rel, line)),
                "security",
                rel,
                line,
                r["issue_text"],
                recommendation,
            )


def _ruff_mapping(code: str) -> tuple[Severity, Concern]:
    if code.startswith("F"):
        return "MEDIUM", "correctness"
    if code.startswith("B"):
        return "LOW", "correctness"
    if code.startswith("PERF"):
        return "LOW", "performance"
    return "LOW", "style"


def _reexport_lines(text: str, package: str) -> set[int]:
    """Lines of ``from .x import y`` / ``from <package>.x import y`` statements: an
    ``__init__.py`` imports these to re-export them."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return set()
    out: set[int] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (
            node.level > 0 or (node.module or "").split(".")[0] == package
        ):
            out.update(range(node.lineno, (node.end_lineno or node.lineno) + 1))
    return out


def _is_reexport(rel: str, line: int | None, sources: _Sources) -> bool:
    path = Path(rel)
    if path.name != "__init__.py" or line is None:
        return False
    package = path.parent.name or ""
    return line in _reexport_lines(sources.text(rel), package)


def _ruff(root: Path, files: list[Path], sources: _Sources) -> Iterator[_Raw]:
    syntax_seen: set[str] = set()
    for chunk in _chunks(files):
        args = ["ruff", "check", "--isolated", "--no-cache", "--select", _RUFF_SELECT]
        out = _run_tool([*args, "--output-format", "json", "--exit-zero", *chunk], root, (0,))
        for d in json.loads(out):
            rel = _rel(root, d["filename"])
            code = d.get("code")
            line = (d.get("location") or {}).get("row")
            if code in (None, "invalid-syntax", "E999"):
                if rel in syntax_seen:  # one syntax error per file is enough to say it does not parse
                    continue
                syntax_seen.add(rel)
                yield (
                    "ruff",
                    "ruff:syntax-error",
                    "HIGH",
                    "correctness",
                    rel,
                    line,
                    f"syntax error: {d['message']}",
                    "Fix the syntax so the module can be imported.",
                )
                continue
            if code == "F401" and _is_reexport(rel, line, sources):
                continue  # a package's __init__ importing its own modules re-exports them
            severity, concern = _ruff_mapping(code)
            fix = (d.get("fix") or {}).get("message") or ""
            url = d.get("url") or ""
            recommendation = " ".join(p for p in (fix and f"{fix}.", url and f"See {url}") if p)
            yield ("ruff", f"ruff:{code}", severity, concern, rel, line, d["message"], recommendation)


def _walk(blocks: list[Any]) -> Iterator[Function]:
    for block in blocks:
        if isinstance(block, Class):
            yield from _walk([*block.methods, *block.inner_classes])
        elif isinstance(block, Function):
            yield block
            yield from _walk(block.closures)


def radon_functions(text: str) -> list[Function]:
    """Every function, method and closure of a module's source with radon's complexity, once each.

    The one radon walker: the reviewer's complexity findings and the performance
    profile's hot spots (``shared/tools/testing.py``) both use it. Raises
    ``SyntaxError``/``ValueError`` for a file that does not parse.
    """
    visitor = ComplexityVisitor.from_code(text)
    return list(_walk([*visitor.functions, *visitor.classes]))


def _complexity(files: list[Path], sources: _Sources) -> Iterator[_Raw]:
    for rel_path in files:
        rel = rel_path.as_posix()
        try:
            functions = radon_functions(sources.text(rel))
        except (SyntaxError, ValueError):
            continue  # ruff reports the syntax error
        for fn in functions:
            cc = fn.complexity
            if cc <= COMPLEXITY_LOW:
                continue
            name = f"{fn.classname}.{fn.name}" if fn.classname else fn.name
            yield (
                "radon",
                "radon:CC",
                "MEDIUM" if cc > COMPLEXITY_MEDIUM else "LOW",
                "style",
                rel,
                fn.lineno,
                f"{name} has cyclomatic complexity {cc} (limit {COMPLEXITY_LOW})",
                "Split it into smaller functions or replace branches with a lookup table.",
            )


def _sort_key(issue: Issue) -> tuple[int, str, int, str, str]:
    return (_SEVERITY_RANK[issue.severity], issue.file or "", issue.line or 0, issue.rule, issue.id)


def analyze(workspace: Path) -> list[Issue]:
    """Run bandit, ruff and radon on ``workspace``; the findings as issues, most severe first."""
    root = workspace.resolve()
    files = python_files(root)
    if not files:
        return []
    sources = _Sources(root)
    raw = [*_bandit(root, files, sources), *_ruff(root, files, sources), *_complexity(files, sources)]
    raw.sort(key=lambda r: (r[4], r[5] or 0, r[1], r[6]))
    issues: list[Issue] = []
    seen: dict[str, int] = {}
    for tool, rule, severity, concern, rel, line, message, recommendation in raw:
        key = "\0".join((tool, rule, rel, sources.line(rel, line)))
        # identical lines with the same finding in one file: number them in file order
        n = seen.get(key, 0)
        seen[key] = n + 1
        digest = hashlib.sha1((key if n == 0 else f"{key}\0{n}").encode(), usedforsecurity=False)
        issues.append(
            Issue(
                id=digest.hexdigest()[:12],
                severity=severity,
                rule=rule,
                message=message,
                tool=tool,
                concern=concern,
                file=rel,
                line=line,
                recommendation=recommendation,
            )
        )
    issues.sort(key=_sort_key)
    logger.info("analysis done files=%d issues=%d", len(files), len(issues))
    return issues
