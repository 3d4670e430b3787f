"""B324/B303 weak hashes (md5, sha1, ...): what the digest is for decides the rewrite.

- hashed data that names a password -> ``hashlib.scrypt``;
- a token that must be unpredictable (a reset / session / CSRF token, a nonce,
  an OTP: the names around say so, the data does not name a password), e.g.
  ``md5(email + now).hexdigest()`` -> ``secrets.token_hex(16)``: hashing
  guessable inputs gives a guessable token whatever the hash, so the fix is a
  random token of the same length;
- a cache key, ETag or checksum -> a ``performance`` dispute, or
  ``usedforsecurity=False`` once the policy puts it in ``must_fix``;
- any other or unknown use -> ``sha256``.

A longer digest than before (scrypt hex is 128 characters, sha256 hex 64) may
not fit the column that stores it: such columns are reported as follow-ups,
never widened by the fix.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

import libcst as cst
import libcst.matchers as m

from shared.contract.protocol import Dispute, FollowUp
from shared.tools.fixes.columns import narrow_columns
from shared.tools.fixes.model import Candidate, Plan, Site, Unfixable
from shared.tools.fixes.tree import Tree, finish, from_import, str_literal, with_kwarg

__all__ = ["SCRYPT_PARAMS", "fix_weak_hash"]


# scrypt cost for password hashing: Django's ScryptPasswordHasher defaults (16 MiB, ~50 ms a hash)
SCRYPT_PARAMS = "n=2**14, r=8, p=1"


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
# words of a value that must be unpredictable
_TOKEN_WORDS = frozenset(
    {
        "token",
        "nonce",
        "otp",
        "csrf",
        "xsrf",
        "reset",
        "invite",
        "invitation",
        "activation",
        "activate",
        "confirm",
        "confirmation",
        "verification",
        "session",
        "sid",
        "apikey",
        "magic",
        "unsubscribe",
    }
)
_DIGEST_SIZE = {"md5": 16, "sha1": 20, "md4": 16, "md2": 16}
_HEX_LEN = {"scrypt": 128, "sha256": 64}


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


def _hash_use(tree: Tree, call: cst.Call, data: list[cst.Arg]) -> tuple[str, str]:
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
    if tokens := sorted(_tokens(purpose) & _TOKEN_WORDS):
        return "token", tokens[0]
    return _secret(purpose) or "unknown", ""


def _column_follow_ups(site: Site, algo: str, new: str, words: tuple[str, ...]) -> list[FollowUp]:
    """Columns that look like they store this digest and are narrower than the new one."""
    width = _HEX_LEN[new]
    return [
        FollowUp(
            file=col.file,
            line=col.line,
            message=(
                f"column {col.name!r} holds {col.width} characters, the {new} hex digest from "
                f"{site.rel}:{site.issue.line} has {width} ({algo} had {2 * _DIGEST_SIZE.get(algo, 20)}): "
                "widen it with a migration before deploying (the fix does not change the schema)"
            ),
            addresses=site.issue.id,
        )
        for col in narrow_columns(site.root, width, words)
    ]


def _chain(tree: Tree, call: cst.Call) -> tuple[cst.Call, str] | None:
    """``hashlib.md5(x).hexdigest()``: the outer call and ``hexdigest``/``digest``; else None."""
    parent = tree.parents.get(call)
    outer = tree.parents.get(parent) if parent is not None else None
    if (
        isinstance(parent, cst.Attribute)
        and parent.attr.value in ("hexdigest", "digest")
        and isinstance(outer, cst.Call)
        and not outer.args
    ):
        return outer, parent.attr.value
    return None


def _data_imports(tree: Tree, data: list[cst.Arg]) -> list[tuple[str, str | None]]:
    """Imports the hashed data used (``time``, ``from datetime import datetime``): dropped if unused."""
    used = set().union(*(_words(a.value, strings=False) for a in data)) if data else set()
    out: list[tuple[str, str | None]] = []
    for stmt in m.findall(tree.module, m.Import() | m.ImportFrom()):
        if isinstance(stmt, cst.Import):
            out += [(tree.code(a.name), None) for a in stmt.names if tree.code(a.name).lower() in used]
        elif isinstance(stmt, cst.ImportFrom) and stmt.module is not None and not stmt.relative:
            if isinstance(stmt.names, cst.ImportStar):
                continue
            mod = tree.code(stmt.module)
            out += [(mod, tree.code(a.name)) for a in stmt.names if tree.code(a.name).lower() in used]
    return out


def _dead_locals(tree: Tree, call: cst.Call, data: list[cst.Arg]) -> list[cst.CSTNode]:
    """``now = str(time.time())`` lines of the function that only fed the hashed data: with the
    data gone they would be unused locals."""
    func = next((a for a in tree.ancestors(call) if isinstance(a, cst.FunctionDef)), None)
    if func is None or not isinstance(func.body, cst.IndentedBlock):
        return []
    in_data = [n.value for a in data for n in m.findall(a, m.Name()) if isinstance(n, cst.Name)]
    everywhere = [n.value for n in m.findall(func, m.Name()) if isinstance(n, cst.Name)]
    dead: list[cst.CSTNode] = []
    for line in func.body.body:
        if not (isinstance(line, cst.SimpleStatementLine) and len(line.body) == 1):
            continue
        stmt = line.body[0]
        if (
            isinstance(stmt, cst.Assign)
            and len(stmt.targets) == 1
            and isinstance(stmt.targets[0].target, cst.Name)
        ):
            name = stmt.targets[0].target.value
            if name in in_data and everywhere.count(name) == 1 + in_data.count(name):
                dead.append(line)
    return dead


def _token_plan(site: Site, tree: Tree, call: cst.Call, algo: str, data: list[cst.Arg], word: str) -> Plan:
    chain = _chain(tree, call)
    if chain is None:
        raise Unfixable(
            f"{algo} at {site.rel}:{site.issue.line} makes a {word} value from guessable data; a token must be "
            "random (secrets.token_urlsafe / token_hex): rewrite the surrounding code by hand"
        )
    outer, kind = chain
    size = _DIGEST_SIZE.get(algo, 16)
    new = f"secrets.token_hex({size})" if kind == "hexdigest" else f"secrets.token_bytes({size})"
    remove = [from_import(call.func, "hashlib"), *_data_imports(tree, data)]
    changes: dict[cst.CSTNode, cst.CSTNode | None] = {outer: cst.parse_expression(new)}
    changes.update(dict.fromkeys(_dead_locals(tree, call, data)))
    text = finish(tree.edit(changes), ["secrets"], remove)
    desc = (
        f"{word} token from {algo}({tree.code(data[0].value) if data else ''}) -> {new}: a hash of guessable "
        f"inputs is guessable whatever the hash; the token is now random, with the same length "
        f"({2 * size if kind == 'hexdigest' else size})"
    )
    return Plan([Candidate(text, desc)])


def fix_weak_hash(site: Site, tree: Tree) -> Plan:
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
    if context == "token":
        return _token_plan(site, tree, call, algo, data, word)
    if context == "non-security":
        if not site.must_fix:
            argument = (
                f"hashlib.{algo} at {where} computes {word}, not a credential or a signature: "
                "collision resistance protects nothing here, while a slower or different hash costs "
                f"time on every use and changes every value already handed out. Proposed: keep {algo} "
                "and mark it usedforsecurity=False."
            )
            return Plan(dispute=Dispute(issue_id=site.issue.id, argument=argument, concern="performance"))
        marked = with_kwarg(call, "usedforsecurity", cst.Name("False"))
        text = finish(tree.replace(call, marked))
        desc = (
            f"hashlib.{algo} computing {word} marked usedforsecurity=False (not a security use; same output)"
        )
        return Plan([Candidate(text, desc)])
    chain = _chain(tree, call)
    if context == "password" and len(data) == 1 and len(call.args) == len(positional) and chain is not None:
        outer, kind = chain
        salt = ".".join(Path(site.rel).with_suffix("").parts)
        kdf = cst.parse_expression(f'hashlib.scrypt(_DATA_, salt=b"{salt}", {SCRYPT_PARAMS})')
        assert isinstance(kdf, cst.Call)
        kdf = kdf.with_changes(args=[kdf.args[0].with_changes(value=data[0].value), *kdf.args[1:]])
        new: cst.BaseExpression = kdf
        if kind == "hexdigest":
            new = cst.Call(cst.Attribute(kdf, cst.Name("hex")))
        text = finish(tree.replace(outer, new), ["hashlib"], [from_import(call.func, "hashlib")])
        desc = (
            f'password hashing with {algo} -> scrypt ({SCRYPT_PARAMS}, memory-hard; salt b"{salt}" '
            "on top of any salt already in the data): deterministic, so hash/verify code keeps working; "
            f"hashes stored with {algo} must be re-created (users reset or re-hash on login)"
        )
        columns: tuple[str, ...] = ("password", "passwd", "pwd")
        follow = _column_follow_ups(site, algo, "scrypt", columns) if kind == "hexdigest" else []
        return Plan([Candidate(text, desc, follow_ups=follow)])
    if is_new:
        new = call.with_changes(
            args=[positional[0].with_changes(value=str_literal("sha256")), *call.args[1:]]
        )
        add: list[str] = []
    elif isinstance(call.func, cst.Attribute):
        new, add = call.with_changes(func=call.func.with_changes(attr=cst.Name("sha256"))), []
    else:
        new, add = call.with_changes(func=cst.Attribute(cst.Name("hashlib"), cst.Name("sha256"))), ["hashlib"]
    text = finish(tree.replace(call, new), add, [from_import(call.func, "hashlib")])
    why = "credential data" if context == "secret" else "a use the code does not name as non-security"
    columns = ("password", "passwd", "pwd", "hash", "digest", "checksum", "signature")
    follow = _column_follow_ups(site, algo, "sha256", columns) if _chain(tree, call) else []
    return Plan(
        [Candidate(text, f"{algo} -> sha256 for {why}: collision-resistant digest", follow_ups=follow)]
    )
