"""Fix review findings in a workspace by rewriting syntax trees (libcst) and running ruff.

``apply_fixes`` takes the reviewer's findings (``Issue`` objects with rule ids
such as ``bandit:B506`` or ``ruff:F401``) and rewrites, file by file, the code
each one points at. Every rewrite is a pure text -> text function over a libcst
tree, so comments and formatting elsewhere are kept. The rewrites:

- B506 ``yaml.load(s, Loader=...)`` -> ``yaml.safe_load(s)``
- B602/B604 ``subprocess.*(<literal or f-string>, shell=True)`` -> an argument
  list (split with shlex at fix time) and ``shell=False``; only when no shell
  syntax (pipes, redirection, variables, globs, builtins) is involved
- B113 ``requests.*`` / ``httpx.*`` without ``timeout=`` -> ``timeout=10``
- B324/B303 md5/sha1: password data -> ``hashlib.scrypt(data, salt=b"<module>",
  n=2**14, r=8, p=1)``; any other or unknown use -> ``hashlib.sha256``; a
  cache key / ETag / checksum -> disputed (concern ``performance``), or
  ``usedforsecurity=False`` once the policy puts it in ``must_fix``
- B105/B106 hard-coded secret -> ``os.environ["<PKG>_<NAME>"]``; when the tests
  need a value without configuration, ``os.environ.get(...) or
  secrets.token_urlsafe(32)``
- B201 ``app.run(debug=True)`` -> ``debug=False``
- B311 ``random`` -> ``secrets`` (choice, randbelow, randbits, SystemRandom)
- ruff findings -> ``ruff check --fix --isolated --select <code>``, then
  ``ruff format --isolated`` on each file that had a ruff finding

``verify`` ("run the tests", from the developer) gates every change: a file's
fixes are first tried together; when the tests break, each fix is retried on
its own and one that still breaks tests is reverted, reported as refused and
disputed with concern ``correctness`` (unless the policy ruled it ``must_fix``).
Waived findings are left alone.
"""

from __future__ import annotations

import difflib
import json
import logging
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

import libcst as cst
import libcst.matchers as m
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor, RemoveImportsVisitor
from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider, QualifiedNameProvider

from shared.protocol import Change, Dispute, Issue

__all__ = ["FixOutcome", "Verify", "apply_fixes", "rule_code", "SUPPORTED_RULES"]

logger = logging.getLogger(__name__)

Verify = Callable[[], str | None]
"""Checks the workspace after a change: None when all is well, else why not."""

# scrypt cost for password hashing: Django's ScryptPasswordHasher defaults (16 MiB, ~50 ms a hash)
SCRYPT_PARAMS = "n=2**14, r=8, p=1"

_SHELL_META = set("|&;<>()$`\\*?[]{}~#!\n\r")
_SHELL_BUILTINS = frozenset(
    "cd export source . alias set unset exit exec eval if then for while until case function "
    "ulimit umask read trap wait shift return local declare readonly".split()
)
_SUBPROCESS = frozenset(f"subprocess.{n}" for n in ("run", "call", "check_call", "check_output", "Popen"))
_HTTP_VERBS = ("get", "post", "put", "patch", "delete", "head", "options", "request")
_HTTP = frozenset(f"{lib}.{v}" for lib in ("requests", "httpx") for v in _HTTP_VERBS)
_WEAK = frozenset({"md5", "sha1", "md4", "md2"})
# a name containing the key -> what the digest is then (a non-security use)
_NON_SECURITY = {
    "etag": "an ETag",
    "cache": "a cache key",
    "checksum": "a checksum",
    "fingerprint": "a content fingerprint",
    "digest_key": "a lookup key",
    "dedup": "a de-duplication key",
    "content_hash": "a content hash",
    "file_hash": "a file checksum",
    "shard": "a shard key",
    "bucket": "a bucket key",
}
_SECRET_PREFIXES: tuple[str, ...] = (
    *("passw", "passphrase", "pwd", "secret", "token", "credential", "auth", "salt"),
    *("signature", "hmac", "apikey", "session", "otp", "nonce", "private"),
)
_PASSWORD_PREFIXES = ("passw", "passphrase", "pwd")
_SECRET_NAME = re.compile(r"pas+wo?r?d|pass(phrase)?$|pwd|token|secrete?|api_?key", re.IGNORECASE)


@dataclass
class FixOutcome:
    """What ``apply_fixes`` did: changes kept, changes refused, findings left and why."""

    changes: list[Change] = field(default_factory=list)
    refused: list[Change] = field(default_factory=list)
    unfixable: list[tuple[Issue, str]] = field(default_factory=list)
    disputes: list[Dispute] = field(default_factory=list)
    waived: list[str] = field(default_factory=list)

    @property
    def fixed_ids(self) -> set[str]:
        return {c.addresses for c in self.changes if c.addresses}

    @property
    def files(self) -> list[str]:
        return sorted({c.file for c in self.changes if c.diff})


def rule_code(issue: Issue) -> tuple[str, str]:
    """``("bandit", "B506")`` from ``bandit:B506`` (or from ``tool`` plus a bare rule)."""
    if ":" in issue.rule:
        tool, code = issue.rule.split(":", 1)
        return tool.lower(), code
    return issue.tool.lower(), issue.rule


# --- one finding's plan -------------------------------------------------------------


class _Unfixable(Exception):
    """The finding cannot be fixed by rewriting; the message says why."""


@dataclass
class _Candidate:
    text: str
    description: str
    kind: str = "security-fix"


@dataclass
class _Plan:
    candidates: list[_Candidate] = field(default_factory=list)
    dispute: Dispute | None = None
    unfixable: str | None = None
    note: str | None = None  # e.g. "already fixed by the same ruff pass"


@dataclass
class _Site:
    """Where a finding is: the file (relative path) and the line in its current text."""

    rel: str
    line: int
    issue: Issue
    must_fix: bool


class _Tree:
    """A parsed module with the metadata the rewrites need."""

    def __init__(self, text: str) -> None:
        try:
            self.wrapper = MetadataWrapper(cst.parse_module(text))
        except cst.ParserSyntaxError as exc:
            raise _Unfixable(f"the file does not parse: {exc.message}") from exc
        self.module = self.wrapper.module
        self.pos = self.wrapper.resolve(PositionProvider)
        self.names = self.wrapper.resolve(QualifiedNameProvider)
        self.parents = self.wrapper.resolve(ParentNodeProvider)

    def qualnames(self, node: cst.CSTNode) -> set[str]:
        found = self.names.get(node, ())
        if callable(found):  # QualifiedNameProvider computes names lazily, on first use
            found = found()
        return {q.name for q in found}

    def at_line(self, nodes: Iterable[cst.CSTNode], line: int) -> cst.CSTNode | None:
        """The node starting on ``line``, else the innermost one spanning it."""
        spanning = []
        for node in nodes:
            rng = self.pos[node]
            if rng.start.line == line:
                return node
            if rng.start.line <= line <= rng.end.line:
                spanning.append((rng.end.line - rng.start.line, node))
        return min(spanning, key=lambda t: t[0])[1] if spanning else None

    def call_at(self, line: int, pred: Callable[[cst.Call], bool]) -> cst.Call:
        calls = [c for c in m.findall(self.module, m.Call()) if isinstance(c, cst.Call) and pred(c)]
        found = self.at_line(calls, line)
        if not isinstance(found, cst.Call):
            raise _Unfixable(f"no matching call found at line {line}")
        return found

    def replace(self, old: cst.CSTNode, new: cst.CSTNode) -> cst.Module:
        """The module with ``old`` swapped for ``new`` (by identity)."""
        module = self.module.deep_replace(old, new)
        assert isinstance(module, cst.Module)
        return module

    def code(self, node: cst.CSTNode) -> str:
        return self.module.code_for_node(node)

    def ancestors(self, node: cst.CSTNode) -> Iterable[cst.CSTNode]:
        while node in self.parents:
            node = self.parents[node]
            yield node


def _finish(
    module: cst.Module, add: Iterable[str] = (), remove: Iterable[tuple[str, str | None]] = ()
) -> str:
    """Add needed imports and drop ones the rewrite left unused."""
    ctx = CodemodContext()
    for mod in add:
        AddImportsVisitor.add_needed_import(ctx, mod)
    for mod, obj in remove:
        RemoveImportsVisitor.remove_unused_import(ctx, mod, obj)
    module = AddImportsVisitor(ctx).transform_module(module)
    return RemoveImportsVisitor(ctx).transform_module(module).code


def _kw(call: cst.Call, name: str) -> cst.Arg | None:
    return next((a for a in call.args if a.keyword is not None and a.keyword.value == name), None)


def _is_true(arg: cst.Arg | None) -> bool:
    return arg is not None and isinstance(arg.value, cst.Name) and arg.value.value == "True"


def _with_kw(call: cst.Call, name: str, value: cst.BaseExpression) -> cst.Call:
    """The call with ``name=value`` set (replaced if present, else appended keeping the layout)."""
    new = cst.Arg(
        value=value,
        keyword=cst.Name(name),
        equal=cst.AssignEqual(
            whitespace_before=cst.SimpleWhitespace(""), whitespace_after=cst.SimpleWhitespace("")
        ),
    )
    args = list(call.args)
    for i, a in enumerate(args):
        if a.keyword is not None and a.keyword.value == name:
            args[i] = a.with_changes(value=value)
            return call.with_changes(args=args)
    if args and isinstance(args[-1].comma, cst.Comma):  # a trailing comma: keep it last
        between = args[-2].comma if len(args) > 1 and isinstance(args[-2].comma, cst.Comma) else None
        args[-1], new = (
            args[-1].with_changes(
                comma=between or cst.Comma(cst.SimpleWhitespace(""), cst.SimpleWhitespace(" "))
            ),
            new.with_changes(comma=args[-1].comma),
        )
    return call.with_changes(args=[*args, new])


def _str_literal(value: str) -> cst.SimpleString:
    return cst.SimpleString(f'"{value}"' if '"' not in value and "\\" not in value else repr(value))


def _from_import(func: cst.BaseExpression, module: str) -> tuple[str, str | None]:
    """The import to drop if the rewrite leaves it unused (``from m import x`` vs ``import m``)."""
    if isinstance(func, cst.Name):
        return module, func.value
    return module, None


# --- bandit rewrites ------------------------------------------------------------------


def _yaml(site: _Site, tree: _Tree) -> _Plan:
    call = tree.call_at(site.line, lambda c: bool(tree.qualnames(c.func) & {"yaml.load", "yaml.load_all"}))
    safe = "safe_load_all" if "yaml.load_all" in tree.qualnames(call.func) else "safe_load"
    stream = next((a for a in call.args if a.keyword is None or a.keyword.value == "stream"), None)
    if stream is None:
        raise _Unfixable("yaml.load has no stream argument to keep")
    if isinstance(call.func, cst.Attribute):
        func: cst.BaseExpression = call.func.with_changes(attr=cst.Name(safe))
        add: list[str] = []
    else:
        func, add = cst.Attribute(cst.Name("yaml"), cst.Name(safe)), ["yaml"]
    new = call.with_changes(func=func, args=[stream.with_changes(comma=cst.MaybeSentinel.DEFAULT)])
    text = _finish(tree.replace(call, new), add, [_from_import(call.func, "yaml")])
    desc = f"{tree.code(call)} -> {tree.code(new)}: only plain YAML types are built, never Python objects"
    return _Plan([_Candidate(text, desc)])


def _needs_shell(command: str) -> bool:
    """Whether the shell would do more than split ``command`` into words (quotes aside)."""
    quote = ""
    for ch in command:
        if quote == "'":
            quote = "" if ch == "'" else quote
        elif quote == '"':
            if ch in "$`\\":
                return True
            quote = "" if ch == '"' else quote
        elif ch in "'\"":
            quote = ch
        elif ch in _SHELL_META:
            return True
    return False


def _command_list(node: cst.BaseExpression) -> list[cst.BaseExpression]:
    """The argv a shell would build from a literal command, or _Unfixable when that needs a shell."""
    if isinstance(node, cst.SimpleString):
        value = node.evaluated_value
        if not isinstance(value, str):
            raise _Unfixable("the command is a bytes literal")
        if _needs_shell(value):
            raise _Unfixable(f"the command {value!r} uses shell syntax (pipes, redirects, variables, globs)")
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise _Unfixable(f"the command {value!r} does not split: {exc}") from exc
        tokens: list[cst.BaseExpression] = [_str_literal(t) for t in words]
    elif isinstance(node, cst.FormattedString):
        template, exprs = "", list[cst.BaseExpression]()
        for part in node.parts:
            if isinstance(part, cst.FormattedStringText):
                if _SHELL_META & set(part.value) or {"'", '"'} & set(part.value):
                    raise _Unfixable("the f-string command uses shell syntax or quoting")
                template += part.value
            elif isinstance(part, cst.FormattedStringExpression):
                if part.conversion is not None or part.format_spec is not None:
                    raise _Unfixable("the f-string command formats a value with a conversion or spec")
                template += f"\0{len(exprs)}\0"
                exprs.append(part.expression)
        words = template.split()
        tokens = []
        for word in words:
            hit = re.fullmatch(r"\0(\d+)\0", word)
            if hit:
                tokens.append(cst.Call(cst.Name("str"), [cst.Arg(exprs[int(hit.group(1))])]))
            elif "\0" in word:
                raise _Unfixable(
                    "a value is glued to other text in one shell word; splitting it changes meaning"
                )
            else:
                tokens.append(_str_literal(word))
    elif isinstance(node, cst.List | cst.Tuple):
        raise _Unfixable(
            "with shell=True only the first item of a list runs (the rest become shell arguments); "
            "dropping the shell changes what runs, so it needs a decision by hand"
        )
    else:
        raise _Unfixable(
            "the command is built at run time (not a literal), so it cannot be split statically; "
            "pass an argument list with shell=False by hand"
        )
    if not words or words[0] in _SHELL_BUILTINS or "=" in words[0]:
        raise _Unfixable("the command needs a shell (empty, a shell builtin or a variable assignment)")
    return tokens


def _shell(site: _Site, tree: _Tree) -> _Plan:
    call = tree.call_at(site.line, lambda c: _is_true(_kw(c, "shell")))
    names = tree.qualnames(call.func)
    if not names & _SUBPROCESS:
        raise _Unfixable(f"shell=True is passed to {tree.code(call.func)}, whose meaning of it is unknown")
    cmd = next((a for a in call.args if a.keyword is None or a.keyword.value == "args"), None)
    if cmd is None:
        raise _Unfixable("the call has no command argument")
    argv = cst.List([cst.Element(t) for t in _command_list(cmd.value)])
    new = _with_kw(call, "shell", cst.Name("False"))
    new = new.with_changes(args=[a.with_changes(value=argv) if a is cmd else a for a in new.args])
    text = _finish(tree.replace(call, new))
    desc = f"{tree.code(cmd.value)} with shell=True -> {tree.code(argv)} with shell=False: no shell parses the values"
    return _Plan([_Candidate(text, desc)])


def _timeout(site: _Site, tree: _Tree) -> _Plan:
    call = tree.call_at(
        site.line, lambda c: bool(tree.qualnames(c.func) & _HTTP) and _kw(c, "timeout") is None
    )
    new = _with_kw(call, "timeout", cst.Integer("10"))
    text = _finish(tree.replace(call, new))
    return _Plan(
        [_Candidate(text, f"{tree.code(call.func)}(...) gets timeout=10: a stalled server cannot hang it")]
    )


def _words(node: cst.CSTNode, *, strings: bool) -> set[str]:
    """Identifiers (and short string literals) in a subtree, lower-cased."""
    out = {n.value.lower() for n in m.findall(node, m.Name()) if isinstance(n, cst.Name)}
    out |= {a.attr.value.lower() for a in m.findall(node, m.Attribute()) if isinstance(a, cst.Attribute)}
    if strings:
        for s in m.findall(node, m.SimpleString()):
            value = s.evaluated_value if isinstance(s, cst.SimpleString) else None
            if isinstance(value, str) and len(value) <= 40:
                out.add(value.lower())
    return out


def _tokens(words: Iterable[str]) -> set[str]:
    out = set()
    for w in words:
        out |= {t.lower() for t in re.findall(r"[A-Z]?[a-z]+|[A-Z]+(?![a-z])|\d+", w)}
        out.add(w.replace("_", ""))
    return out


def _secret(words: set[str]) -> str | None:
    """``password`` / ``secret`` when the words name credential material, else None."""
    toks = _tokens(words) - {"author", "authors"}
    if any(t.startswith(_PASSWORD_PREFIXES) or t in ("pw", "pass") for t in toks):
        return "password"
    if any(t.startswith(_SECRET_PREFIXES) or t == "sign" for t in toks):
        return "secret"
    return None


def _hash_use(tree: _Tree, call: cst.Call, data: list[cst.Arg]) -> tuple[str, str]:
    """(context, word): what the digest is for, judged from the names around it."""
    data_words = set().union(*(_words(a.value, strings=False) for a in data)) if data else set()
    purpose: set[str] = set()
    statement: cst.CSTNode = call
    for node in tree.ancestors(call):
        if isinstance(node, cst.FunctionDef | cst.ClassDef):
            purpose.add(node.name.value.lower())
        elif isinstance(node, cst.BaseSmallStatement) and statement is call:
            statement = node
    purpose |= _words(statement, strings=True) - data_words
    if (kind := _secret(data_words)) is not None:
        return kind, "the hashed data"
    for word in sorted(purpose):
        for marker, noun in _NON_SECURITY.items():
            if marker in word:
                return "non-security", noun
    return _secret(purpose) or "unknown", ""


def _weak_hash(site: _Site, tree: _Tree) -> _Plan:
    def weak(c: cst.Call) -> bool:
        names = tree.qualnames(c.func)
        if any(n.startswith("hashlib.") and n.split(".", 1)[1] in _WEAK for n in names):
            return True
        first = c.args[0].value if c.args else None
        return (
            "hashlib.new" in names
            and isinstance(first, cst.SimpleString)
            and (str(first.evaluated_value).lower() in _WEAK)
        )

    call = tree.call_at(site.line, weak)
    is_new = "hashlib.new" in tree.qualnames(call.func)
    positional = [a for a in call.args if a.keyword is None]
    data = positional[1:] if is_new else positional[:1]
    first = positional[0].value if positional else None
    if is_new and isinstance(first, cst.SimpleString):
        algo = str(first.evaluated_value)
    else:
        algo = tree.code(call.func).rsplit(".", 1)[-1]
    context, word = _hash_use(tree, call, data)
    where = f"{site.rel}:{site.issue.line}"
    if context == "non-security":
        if not site.must_fix:
            argument = (
                f"hashlib.{algo} at {where} computes {word}, not a credential or a signature: "
                "collision resistance protects nothing here, while a slower or different hash costs "
                f"time on every use and changes every value already handed out. Proposed: keep {algo} "
                "and mark it usedforsecurity=False."
            )
            return _Plan(dispute=Dispute(issue_id=site.issue.id, argument=argument, concern="performance"))
        marked = _with_kw(call, "usedforsecurity", cst.Name("False"))
        text = _finish(tree.replace(call, marked))
        desc = (
            f"hashlib.{algo} computing {word} marked usedforsecurity=False (not a security use; same output)"
        )
        return _Plan([_Candidate(text, desc)])
    parent = tree.parents.get(call)
    outer = tree.parents.get(parent) if parent is not None else None
    if (
        context == "password"
        and len(data) == 1
        and len(call.args) == len(positional)
        and isinstance(parent, cst.Attribute)
        and parent.attr.value in ("hexdigest", "digest")
        and isinstance(outer, cst.Call)
        and not outer.args
    ):
        salt = ".".join(Path(site.rel).with_suffix("").parts)
        kdf = cst.parse_expression(f'hashlib.scrypt(_DATA_, salt=b"{salt}", {SCRYPT_PARAMS})')
        assert isinstance(kdf, cst.Call)
        kdf = kdf.with_changes(args=[kdf.args[0].with_changes(value=data[0].value), *kdf.args[1:]])
        new: cst.BaseExpression = kdf
        if parent.attr.value == "hexdigest":
            new = cst.Call(cst.Attribute(kdf, cst.Name("hex")))
        text = _finish(tree.replace(outer, new), ["hashlib"], [_from_import(call.func, "hashlib")])
        desc = (
            f'password hashing with {algo} -> scrypt ({SCRYPT_PARAMS}, memory-hard; salt b"{salt}" '
            "on top of any salt already in the data): deterministic, so hash/verify code keeps working; "
            f"hashes stored with {algo} must be re-created (users reset or re-hash on login)"
        )
        return _Plan([_Candidate(text, desc)])
    if is_new:
        new = call.with_changes(
            args=[positional[0].with_changes(value=_str_literal("sha256")), *call.args[1:]]
        )
        add: list[str] = []
    elif isinstance(call.func, cst.Attribute):
        new, add = call.with_changes(func=call.func.with_changes(attr=cst.Name("sha256"))), []
    else:
        new, add = call.with_changes(func=cst.Attribute(cst.Name("hashlib"), cst.Name("sha256"))), ["hashlib"]
    text = _finish(tree.replace(call, new), add, [_from_import(call.func, "hashlib")])
    why = "credential data" if context == "secret" else "a use the code does not name as non-security"
    return _Plan([_Candidate(text, f"{algo} -> sha256 for {why}: collision-resistant digest")])


def _env_name(rel: str, name: str) -> str:
    parts = Path(rel).with_suffix("").parts
    prefix = re.sub(r"\W", "_", parts[0] if len(parts) > 1 else parts[-1]).upper()
    name = re.sub(r"\W", "_", name).upper()
    return name if name.startswith(prefix + "_") else f"{prefix}_{name}"


def _env_candidates(tree: _Tree, old: cst.CSTNode, name: str, what: str) -> list[_Candidate]:
    strict = cst.parse_expression(f'os.environ["{name}"]')
    lenient = cst.parse_expression(f'os.environ.get("{name}") or secrets.token_urlsafe(32)')
    return [
        _Candidate(
            _finish(tree.replace(old, strict), ["os"]),
            f"hard-coded {what} -> os.environ[{name!r}]: the value comes from configuration (required)",
        ),
        _Candidate(
            _finish(tree.replace(old, lenient), ["os", "secrets"]),
            f"hard-coded {what} -> os.environ.get({name!r}) or a random secrets.token_urlsafe(32) per process "
            "(the tests import the module without configuration); set it in production",
        ),
    ]


def _hardcoded(site: _Site, tree: _Tree) -> _Plan:
    code = rule_code(site.issue)[1]
    strings = (cst.SimpleString, cst.ConcatenatedString)
    if code == "B106":
        call = tree.call_at(
            site.line,
            lambda c: any(
                a.keyword and _SECRET_NAME.search(a.keyword.value) and isinstance(a.value, strings)
                for a in c.args
            ),
        )
        arg = next(
            a
            for a in call.args
            if a.keyword and _SECRET_NAME.search(a.keyword.value) and isinstance(a.value, strings)
        )
        assert arg.keyword is not None
        return _Plan(
            _env_candidates(tree, arg.value, _env_name(site.rel, arg.keyword.value), f"{arg.keyword.value}=")
        )
    stmts = [
        s
        for s in m.findall(tree.module, m.Assign() | m.AnnAssign())
        if isinstance(s, cst.Assign | cst.AnnAssign)
    ]
    stmt = tree.at_line(stmts, site.line)
    if not isinstance(stmt, cst.Assign | cst.AnnAssign) or not isinstance(stmt.value, strings):
        raise _Unfixable(
            "the literal is not the value of an assignment (a comparison or default needs a human)"
        )
    target = stmt.targets[0].target if isinstance(stmt, cst.Assign) else stmt.target
    if isinstance(target, cst.Name):
        name = target.value
    elif isinstance(target, cst.Attribute):
        name = target.attr.value
    else:
        raise _Unfixable("the secret is assigned to something other than a name or attribute")
    return _Plan(_env_candidates(tree, stmt.value, _env_name(site.rel, name), name))


def _debug(site: _Site, tree: _Tree) -> _Plan:
    call = tree.call_at(site.line, lambda c: _is_true(_kw(c, "debug")))
    new = _with_kw(call, "debug", cst.Name("False"))
    text = _finish(tree.replace(call, new))
    return _Plan(
        [_Candidate(text, f"{tree.code(call.func)}(debug=True) -> debug=False: no interactive debugger")]
    )


def _atom(code: str) -> str:
    return code if re.fullmatch(r"[\w.]+", code) else f"({code})"


def _random(site: _Site, tree: _Tree) -> _Plan:
    call = tree.call_at(site.line, lambda c: any(n.startswith("random.") for n in tree.qualnames(c.func)))
    name = next(n for n in tree.qualnames(call.func) if n.startswith("random.")).split(".", 1)[1]
    args = [tree.code(a.value) for a in call.args if a.keyword is None]
    only_pos = len(args) == len(call.args)
    replace: cst.CSTNode = call
    if name == "choice" and only_pos:
        new = f"secrets.choice({args[0]})"
    elif name == "getrandbits" and only_pos:
        new = f"secrets.randbits({args[0]})"
    elif name == "randbytes" and only_pos:
        new = f"secrets.token_bytes({args[0]})"
    elif name == "randrange" and only_pos and len(args) in (1, 2):
        lo, hi = (["0", *args] if len(args) == 1 else args)[:2]
        new = (
            f"secrets.randbelow({hi})"
            if lo == "0"
            else f"{_atom(lo)} + secrets.randbelow({_atom(hi)} - {_atom(lo)})"
        )
    elif name == "randint" and only_pos and len(args) == 2:
        lo, hi = args
        if lo.isdigit() and hi.isdigit():
            span = f"{int(hi) - int(lo) + 1}"
        else:
            span = f"{_atom(hi)} + 1" if lo == "0" else f"{_atom(hi)} - {_atom(lo)} + 1"
        new = f"secrets.randbelow({span})" if lo == "0" else f"{_atom(lo)} + secrets.randbelow({span})"
    elif name == "random" and not args:
        arg = tree.parents.get(call)
        parent = tree.parents.get(arg) if arg is not None else None  # Arg -> Call
        if isinstance(parent, cst.Call) and tree.code(parent.func) == "str" and len(parent.args) == 1:
            replace, new = parent, "secrets.token_hex(16)"
        else:
            new = "secrets.SystemRandom().random()"
    elif name in ("seed", "getstate", "setstate", "Random"):
        raise _Unfixable(f"random.{name} is about reproducible pseudo-randomness; secrets cannot replace it")
    else:
        new = f"secrets.SystemRandom().{name}({tree.code(call)[len(tree.code(call.func)) + 1 : -1]})"
    expr = cst.parse_expression(new)
    standalone = (cst.Arg, cst.Assign, cst.AnnAssign, cst.Return, cst.Element, cst.Expr)
    if isinstance(expr, cst.BinaryOperation) and not isinstance(tree.parents.get(replace), standalone):
        expr = expr.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])  # keep precedence
    text = _finish(tree.replace(replace, expr), ["secrets"], [_from_import(call.func, "random")])
    return _Plan([_Candidate(text, f"{tree.code(replace)} -> {new}: a cryptographically secure generator")])


_BANDIT = {
    "B506": _yaml,
    "B602": _shell,
    "B604": _shell,
    "B113": _timeout,
    "B324": _weak_hash,
    "B303": _weak_hash,
    "B105": _hardcoded,
    "B106": _hardcoded,
    "B201": _debug,
    "B311": _random,
}
SUPPORTED_RULES = frozenset({*(f"bandit:{code}" for code in _BANDIT), "ruff:*"})
"""Rule ids with a rewrite (``ruff:*``: any ruff rule with a safe automatic fix)."""


# --- ruff -------------------------------------------------------------------------------


def _ruff(root: Path, rel: str, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: S603 - fixed argv from the current interpreter, no shell
        [sys.executable, "-m", "ruff", *args, "--isolated", "--no-cache", "--stdin-filename", rel, "-"],
        cwd=root,
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )


def _ruff_rows(root: Path, rel: str, text: str, code: str) -> set[int]:
    proc = _ruff(root, rel, text, "check", "--select", code, "--output-format", "json", "--exit-zero")
    if proc.returncode != 0:
        raise _Unfixable(f"ruff failed: {proc.stderr.strip()[-300:]}")
    return {d["location"]["row"] for d in json.loads(proc.stdout or "[]") if d.get("code") == code}


def _ruff_plan(root: Path, rel: str, text: str, line: int | None, issue: Issue, passes: dict) -> _Plan:
    code = rule_code(issue)[1]
    if not re.fullmatch(r"[A-Z]+[0-9]+", code):
        raise _Unfixable(f"ruff:{code} is not a rule ruff can fix")
    if line is None or line not in _ruff_rows(root, rel, text, code):
        if (rel, code) in passes:
            return _Plan(note=f"{issue.rule} fixed by the same ruff pass as {passes[rel, code]}")
        raise _Unfixable(f"ruff no longer reports {code} at this line")
    proc = _ruff(root, rel, text, "check", "--fix", "--select", code, "--exit-zero")
    fixed = proc.stdout
    mapped = _map_line(text, fixed, line)
    if (
        proc.returncode != 0
        or fixed == text
        or (mapped is not None and mapped in _ruff_rows(root, rel, fixed, code))
    ):
        raise _Unfixable(f"ruff has no safe automatic fix for {code} here")
    passes[rel, code] = issue.id
    return _Plan([_Candidate(fixed, f"ruff --fix {code}: {issue.message}", kind="lint-fix")])


# --- the driver ----------------------------------------------------------------------------


def _map_line(old: str, new: str, line: int) -> int | None:
    """Where line ``line`` of ``old`` is in ``new`` (None when it was deleted)."""
    sm = difflib.SequenceMatcher(None, old.splitlines(), new.splitlines(), autojunk=False)
    for tag, i1, i2, j1, j2 in sm.get_opcodes():
        if i1 <= line - 1 < i2:
            if tag == "equal":
                return j1 + (line - 1 - i1) + 1
            if tag == "delete":
                return None
            return min(j1 + (line - 1 - i1), j2 - 1) + 1
    return None


def _diff(rel: str, before: str, after: str) -> str:
    lines = difflib.unified_diff(
        before.splitlines(keepends=True), after.splitlines(keepends=True), f"a/{rel}", f"b/{rel}"
    )
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


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
    ruff_passes: dict[tuple[str, str], str] = field(default_factory=dict)
    sorted: bool | None = None
    formatted: bool = False

    def plan(self, issue: Issue) -> _Plan:
        tool, code = rule_code(issue)
        line = _map_line(self.original, self.current, issue.line) if issue.line else None
        try:
            if tool == "ruff":
                return _ruff_plan(self.root, self.rel, self.current, line, issue, self.ruff_passes)
            rewrite = _BANDIT.get(code) if tool == "bandit" else None
            if rewrite is None:
                return _Plan(unfixable=_no_rewrite(tool, code))
            if line is None:
                return _Plan(unfixable="the finding's line is gone (an earlier fix changed it)")
            site = _Site(self.rel, line, issue, issue.id in self.must_fix)
            plan = rewrite(site, _Tree(self.current))
        except _Unfixable as exc:
            return _Plan(unfixable=str(exc))
        plan.candidates = [replace(c, text=self.tidy(c.text)) for c in plan.candidates]
        return plan

    def tidy(self, text: str) -> str:
        """Keep a file that was import-sorted / ruff-formatted that way after a rewrite."""
        if self.sorted is None:
            self.sorted = not _ruff_rows(self.root, self.rel, self.original, "I001")
            proc = _ruff(self.root, self.rel, self.original, "format", "--check")
            self.formatted = proc.returncode == 0
        if self.sorted:
            proc = _ruff(self.root, self.rel, text, "check", "--fix", "--select", "I001", "--exit-zero")
            text = proc.stdout if proc.returncode == 0 and proc.stdout else text
        if self.formatted:
            proc = _ruff(self.root, self.rel, text, "format")
            text = proc.stdout if proc.returncode == 0 and proc.stdout else text
        return text

    def write(self, text: str) -> None:
        (self.root / self.rel).write_bytes(text.encode("utf-8"))


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
            diff = _diff(f.rel, f.current, cand.text)
            out.changes.append(
                Change(
                    file=f.rel, kind=cand.kind, description=cand.description, diff=diff, addresses=issue.id
                )
            )
            f.current = cand.text
            break
        else:
            first = plan.candidates[0]
            out.refused.append(
                Change(
                    file=f.rel,
                    kind="refused",
                    description=f"{first.description}; refused: {reason}",
                    diff=_diff(f.rel, f.current, first.text),
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


def _format(f: _File, check: Verify | None, out: FixOutcome) -> None:
    proc = _ruff(f.root, f.rel, f.current, "format")
    if proc.returncode != 0 or proc.stdout == f.current:
        return
    change = Change(
        file=f.rel, kind="format", description="ruff format", diff=_diff(f.rel, f.current, proc.stdout)
    )
    f.write(proc.stdout)
    reason = check() if check is not None else None
    if reason is None:
        f.current = proc.stdout
        out.changes.append(change)
    else:
        f.write(f.current)
        out.refused.append(
            Change(
                file=f.rel, kind="refused", description=f"ruff format; refused: {reason}", diff=change.diff
            )
        )


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
    if any(rule_code(i)[0] == "ruff" for i in issues) and not stop():
        _format(f, verify, out)


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
        try:
            text = (root / rel).read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            out.unfixable.extend((i, "the file is not UTF-8 text") for i in issues)
            continue
        _fix_file(_File(root, rel, text, text, set(must_fix)), issues, verify, out, stop)
    logger.info(
        "fixes applied=%d refused=%d unfixable=%d disputed=%d waived=%d",
        len(out.fixed_ids),
        len(out.refused),
        len(out.unfixable),
        len(out.disputes),
        len(out.waived),
    )
    return out


def _merge(out: FixOutcome, more: FixOutcome) -> None:
    out.changes += more.changes
    out.refused += more.refused
    out.unfixable += more.unfixable
    out.disputes += more.disputes
