"""B105/B106 hard-coded secrets -> ``os.environ``; B311 ``random`` -> ``secrets``."""

from __future__ import annotations

import re

import libcst as cst
import libcst.matchers as m

from shared.contract.protocol import Setting
from shared.tools.fixes.model import Candidate, Plan, Site, Unfixable, rule_code
from shared.tools.fixes.tree import Tree, finish, from_import

__all__ = ["fix_hardcoded_secret", "fix_random"]


_SECRET_NAME = re.compile(r"pas+wo?r?d|pass(phrase)?$|pwd|token|secrete?|api_?key", re.IGNORECASE)


def _env_candidates(site: Site, tree: Tree, old: cst.BaseExpression, name: str, what: str) -> list[Candidate]:
    strict = cst.parse_expression(f'os.environ["{name}"]')
    lenient = cst.parse_expression(f'os.environ.get("{name}") or secrets.token_urlsafe(32)')
    purpose = f"the {what} that was hard-coded in {site.rel}"
    return [
        Candidate(
            finish(tree.replace(old, strict), ["os"]),
            f"hard-coded {what} -> os.environ[{name!r}]: the value comes from configuration (required; "
            f"set {name} before running)",
            settings=[Setting(name=name, file=site.rel, line=site.line, purpose=purpose)],
        ),
        Candidate(
            finish(tree.replace(old, lenient), ["os", "secrets"]),
            f"hard-coded {what} -> os.environ.get({name!r}) or a random secrets.token_urlsafe(32) per process "
            f"(the tests import the module without configuration); set {name} in production",
            settings=[
                Setting(
                    name=name,
                    file=site.rel,
                    line=site.line,
                    purpose=f"{purpose} (random per process when unset)",
                    required=False,
                )
            ],
        ),
    ]


def _literal(tree: Tree, node: cst.BaseExpression) -> str:
    if isinstance(node, cst.SimpleString | cst.ConcatenatedString):
        value = node.evaluated_value
        if isinstance(value, str | bytes):
            return value if isinstance(value, str) else value.decode("latin-1")
    return tree.code(node)


def _scopes(tree: Tree, node: cst.CSTNode) -> list[str]:
    return [a.name.value for a in tree.ancestors(node) if isinstance(a, cst.FunctionDef | cst.ClassDef)]


def _target_name(target: cst.BaseExpression) -> str:
    """The name a secret is assigned to: ``NAME``, ``obj.NAME`` or ``obj["NAME"]`` (e.g. Flask's
    ``app.config["SECRET_KEY"]``)."""
    if isinstance(target, cst.Name):
        return target.value
    if isinstance(target, cst.Attribute):
        return target.attr.value
    if isinstance(target, cst.Subscript) and len(target.slice) == 1:
        index = target.slice[0].slice
        if isinstance(index, cst.Index) and isinstance(index.value, cst.SimpleString):
            key = index.value.evaluated_value
            if isinstance(key, str) and re.fullmatch(r"[A-Za-z_][\w.-]*", key):
                return key
    raise Unfixable("the secret is assigned to something other than a name, attribute or string key")


def fix_hardcoded_secret(site: Site, tree: Tree) -> Plan:
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
        # the call's other short string arguments tell several secrets of one file apart
        hints = [
            str(a.value.evaluated_value)
            for a in call.args
            if a is not arg
            and isinstance(a.value, cst.SimpleString)
            and len(str(a.value.evaluated_value)) <= 24
        ] + _scopes(tree, call)
        name = site.env.name_for(
            site.rel, arg.keyword.value, _literal(tree, arg.value), hints, hints_first=True
        )
        return Plan(_env_candidates(site, tree, arg.value, name, f"{arg.keyword.value}="))
    stmts = [
        s
        for s in m.findall(tree.module, m.Assign() | m.AnnAssign())
        if isinstance(s, cst.Assign | cst.AnnAssign)
    ]
    stmt = tree.at_line(stmts, site.line)
    if not isinstance(stmt, cst.Assign | cst.AnnAssign) or not isinstance(stmt.value, strings):
        raise Unfixable(
            "the literal is not the value of an assignment (a comparison or default needs a human)"
        )
    target = _target_name(stmt.targets[0].target if isinstance(stmt, cst.Assign) else stmt.target)
    name = site.env.name_for(site.rel, target, _literal(tree, stmt.value), _scopes(tree, stmt))
    return Plan(_env_candidates(site, tree, stmt.value, name, target))


def _atom(code: str) -> str:
    return code if re.fullmatch(r"[\w.]+", code) else f"({code})"


def fix_random(site: Site, tree: Tree) -> Plan:
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
        raise Unfixable(f"random.{name} is about reproducible pseudo-randomness; secrets cannot replace it")
    else:
        new = f"secrets.SystemRandom().{name}({tree.code(call)[len(tree.code(call.func)) + 1 : -1]})"
    expr = cst.parse_expression(new)
    standalone = (cst.Arg, cst.Assign, cst.AnnAssign, cst.Return, cst.Element, cst.Expr)
    if isinstance(expr, cst.BinaryOperation) and not isinstance(tree.parents.get(replace), standalone):
        expr = expr.with_changes(lpar=[cst.LeftParen()], rpar=[cst.RightParen()])  # keep precedence
    text = finish(tree.replace(replace, expr), ["secrets"], [from_import(call.func, "random")])
    return Plan([Candidate(text, f"{tree.code(replace)} -> {new}: a cryptographically secure generator")])
