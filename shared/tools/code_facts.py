"""What a workspace's code does about secrets: the facts a research answer is grounded in.

The researcher reads the attached workspace before it answers, so "how should
this app store passwords?" is answered about *this* app: its MD5 password hash,
its plaintext seeded passwords, its tokens from ``random``. The scan is static
(Python's ``ast``; workspace code never runs here), bounded in files and bytes,
and each fact names the file, the line, the code, and the topic words that
decide whether it bears on the question and how to search the corpus for it.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from shared.contract.workspace import SKIP_DIRS
from shared.tools.analysis import is_test_file

__all__ = ["CodeFact", "scan_workspace", "relevant_facts", "MAX_FILES", "MAX_FILE_BYTES"]

MAX_FILES = 2_000
MAX_FILE_BYTES = 1_000_000

_FAST_HASHES = frozenset({"md5", "sha1", "sha224", "sha256", "sha384", "sha512", "blake2b", "blake2s"})
_SLOW_HASHES = frozenset({"scrypt", "pbkdf2_hmac"})
_SECRET_NAME = re.compile(r"(?i)pass(word|wd)?|pwd|secret|api_?key|private_?key|token")
_PASSWORD_NAME = re.compile(r"(?i)pass(word|wd)?\b|pwd|password")
_TOKEN_NAME = re.compile(r"(?i)token|secret|session|nonce|otp|reset|key|salt|code")
_SESSION_KEY = re.compile(r"(?i)secret_?key")  # Flask's and Django's session-signing key
_COMPARED_NAME = re.compile(r"(?i)token|digest|hash|signature|password|secret|hmac|mac\b")
_RANDOM_CALLS = frozenset({"random", "randint", "randrange", "choice", "choices", "sample", "getrandbits"})


@dataclass(frozen=True)
class CodeFact:
    """One thing the code does: where, the code line, what it means, and its topic words."""

    file: str  # posix path inside the workspace
    line: int
    code: str
    finding: str  # a sentence about this code
    topics: tuple[str, ...]  # what the fact is about (decides relevance to the question)
    search: str  # the words to look the remedy up with in the research corpus


def _name(node: ast.AST) -> str:
    """A dotted name for a call target or a compared value (``hashlib.md5``, ``user.password``)."""
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        base = _name(node.value)
        return f"{base}.{node.attr}" if base else node.attr
    if isinstance(node, ast.Subscript) and isinstance(node.slice, ast.Constant):
        return f"{_name(node.value)}[{node.slice.value!r}]"
    if isinstance(node, ast.Call):
        return _name(node.func)
    return ""


class _Scan(ast.NodeVisitor):
    def __init__(self, file: str, lines: list[str]) -> None:
        self.file, self.lines = file, lines
        self.facts: list[CodeFact] = []
        self.function = ""
        self.imported: dict[str, str] = {}  # local name -> module.attr (``from hashlib import md5``)

    def fact(self, node: ast.AST, finding: str, topics: tuple[str, ...], search: str) -> None:
        line = getattr(node, "lineno", 1)
        code = self.lines[line - 1].strip() if 0 < line <= len(self.lines) else ""
        where = f" in {self.function}()" if self.function else ""
        self.facts.append(CodeFact(self.file, line, code[:200], finding.format(where=where), topics, search))

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        for alias in node.names:
            self.imported[alias.asname or alias.name] = f"{node.module or ''}.{alias.name}"

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_Call(self, node: ast.Call) -> None:
        target = _name(node.func)
        target = self.imported.get(target, target)
        module, _, attr = target.rpartition(".")
        args_text = " ".join(ast.unparse(a) for a in [*node.args, *(k.value for k in node.keywords)])
        about_password = bool(_PASSWORD_NAME.search(self.function) or _PASSWORD_NAME.search(args_text))
        if module == "hashlib" and attr in _FAST_HASHES | {"new"} and about_password:
            # a fast digest of anything else (an ETag, a cache key) is no secret matter
            algo = attr if attr != "new" else (ast.unparse(node.args[0]).strip("'\"") if node.args else "new")
            self.fact(
                node,
                f"Passwords are hashed with hashlib.{algo}{{where}}, a fast general-purpose digest.",
                ("password", "hash", algo),
                f"{algo} password hash",
            )
        elif module == "hashlib" and attr in _SLOW_HASHES:
            self.fact(node, f"hashlib.{attr} derives a key{{where}}.", ("password", "hash", attr), attr)
        elif module == "random" and attr in _RANDOM_CALLS and _TOKEN_NAME.search(self.function):
            self.fact(
                node,
                f"random.{attr}{{where}} makes a secret value with a predictable generator, not `secrets`.",
                ("token", "session", "random", "secret"),
                "random token secrets generation",
            )
        self.generic_visit(node)

    def _literal_secret(self, name: str, value: ast.AST, node: ast.AST) -> None:
        if _SECRET_NAME.search(name) and isinstance(value, ast.Constant) and isinstance(value.value, str):
            if len(value.value) >= 3 and " " not in value.value.strip():
                kind = "password" if _PASSWORD_NAME.search(name) else "secret"
                signs = " it signs the session cookies" if _SESSION_KEY.search(name) else ""
                self.fact(
                    node,
                    f"A {kind} is written in the code in plain text ({name}){{where}}{';' if signs else ''}{signs}.",
                    (kind, "plaintext", "secret") + (("session",) if signs else ()),
                    f"plaintext {kind} store" if not signs else "hard-coded secret out of the code",
                )

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            self._literal_secret(_name(target), node.value, node)
        self.generic_visit(node)

    def visit_keyword(self, node: ast.keyword) -> None:
        if node.arg:
            self._literal_secret(node.arg, node.value, node.value)
        self.generic_visit(node)

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values, strict=True):
            if isinstance(key, ast.Constant) and isinstance(key.value, str):
                self._literal_secret(key.value, value, value)
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        if any(isinstance(op, ast.Eq | ast.NotEq) for op in node.ops):
            names = [_name(n) for n in (node.left, *node.comparators)]
            if any(_COMPARED_NAME.search(n) for n in names) and not any(
                isinstance(n, ast.Constant) for n in (node.left, *node.comparators)
            ):
                self.fact(
                    node,
                    "A secret is compared with == / !={where}, which is not constant-time.",
                    ("timing", "compare", "password", "token"),
                    "constant time comparison timing attack",
                )
        self.generic_visit(node)


def _python_files(root: Path) -> Iterator[Path]:
    count = 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS or part.startswith(".") for part in rel.parts[:-1]) or is_test_file(rel):
            continue  # test code holds made-up passwords and tokens on purpose
        if path.is_file() and not path.is_symlink() and path.stat().st_size <= MAX_FILE_BYTES:
            count += 1
            if count > MAX_FILES:
                return
            yield path


def scan_workspace(root: Path) -> tuple[list[CodeFact], int]:
    """The facts in every Python file below ``root`` (tests left out) and how many files were read.

    Files that do not parse are skipped (the count still says they were read).
    """
    facts: list[CodeFact] = []
    files = 0
    for path in _python_files(root):
        files += 1
        source = path.read_text(encoding="utf-8", errors="replace")
        try:
            tree = ast.parse(source)
        except (SyntaxError, ValueError):
            continue
        scan = _Scan(path.relative_to(root).as_posix(), source.splitlines())
        scan.visit(tree)
        facts += scan.facts
    return facts, files


def _stem(word: str) -> str:
    word = word.lower()
    for suffix in ("ing", "es", "s"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def relevant_facts(facts: list[CodeFact], question: str) -> list[CodeFact]:
    """The facts whose topics the question names (``passwords`` names ``password``), in file order."""
    asked = {_stem(w) for w in re.findall(r"[^\W_]+", question)}
    return [f for f in facts if any(_stem(t) in asked for t in f.topics)]
