"""Rewrites of risky call arguments: B506 yaml.load, B113 requests/httpx without timeout, B201 debug=True."""

from __future__ import annotations

import libcst as cst

from shared.tools.fixes.model import Candidate, Plan, Site, Unfixable
from shared.tools.fixes.tree import Tree, finish, from_import, is_true, kwarg, with_kwarg

__all__ = ["fix_debug", "fix_request_timeout", "fix_yaml_load"]


_HTTP_VERBS = ("get", "post", "put", "patch", "delete", "head", "options", "request")
_HTTP = frozenset(f"{lib}.{v}" for lib in ("requests", "httpx") for v in _HTTP_VERBS)


def fix_yaml_load(site: Site, tree: Tree) -> Plan:
    call = tree.call_at(site.line, lambda c: bool(tree.qualnames(c.func) & {"yaml.load", "yaml.load_all"}))
    safe = "safe_load_all" if "yaml.load_all" in tree.qualnames(call.func) else "safe_load"
    stream = next((a for a in call.args if a.keyword is None or a.keyword.value == "stream"), None)
    if stream is None:
        raise Unfixable("yaml.load has no stream argument to keep")
    if isinstance(call.func, cst.Attribute):
        func: cst.BaseExpression = call.func.with_changes(attr=cst.Name(safe))
        add: list[str] = []
    else:
        func, add = cst.Attribute(cst.Name("yaml"), cst.Name(safe)), ["yaml"]
    new = call.with_changes(func=func, args=[stream.with_changes(comma=cst.MaybeSentinel.DEFAULT)])
    text = finish(tree.replace(call, new), add, [from_import(call.func, "yaml")])
    desc = f"{tree.code(call)} -> {tree.code(new)}: only plain YAML types are built, never Python objects"
    return Plan([Candidate(text, desc)])


def fix_request_timeout(site: Site, tree: Tree) -> Plan:
    call = tree.call_at(
        site.line, lambda c: bool(tree.qualnames(c.func) & _HTTP) and kwarg(c, "timeout") is None
    )
    new = with_kwarg(call, "timeout", cst.Integer("10"))
    text = finish(tree.replace(call, new))
    return Plan(
        [Candidate(text, f"{tree.code(call.func)}(...) gets timeout=10: a stalled server cannot hang it")]
    )


def fix_debug(site: Site, tree: Tree) -> Plan:
    call = tree.call_at(site.line, lambda c: is_true(kwarg(c, "debug")))
    new = with_kwarg(call, "debug", cst.Name("False"))
    text = finish(tree.replace(call, new))
    return Plan(
        [Candidate(text, f"{tree.code(call.func)}(debug=True) -> debug=False: no interactive debugger")]
    )
