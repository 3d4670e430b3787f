"""Shared libcst helpers for the rewrites: a parsed module with metadata, call edits, import upkeep."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import libcst as cst
import libcst.matchers as m
from libcst.codemod import CodemodContext
from libcst.codemod.visitors import AddImportsVisitor, RemoveImportsVisitor
from libcst.metadata import MetadataWrapper, ParentNodeProvider, PositionProvider, QualifiedNameProvider

from shared.tools.fixes.model import Unfixable

__all__ = ["Tree", "finish", "from_import", "is_true", "kwarg", "str_literal", "with_kwarg"]


class Tree:
    """A parsed module with the metadata the rewrites need."""

    def __init__(self, text: str) -> None:
        try:
            self.wrapper = MetadataWrapper(cst.parse_module(text))
        except cst.ParserSyntaxError as exc:
            raise Unfixable(f"the file does not parse: {exc.message}") from exc
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
            raise Unfixable(f"no matching call found at line {line}")
        return found

    def replace(self, old: cst.CSTNode, new: cst.CSTNode) -> cst.Module:
        """The module with ``old`` swapped for ``new`` (by identity)."""
        module = self.module.deep_replace(old, new)
        assert isinstance(module, cst.Module)
        return module

    def edit(self, changes: dict[cst.CSTNode, cst.CSTNode | None]) -> cst.Module:
        """The module with several nodes swapped (by identity) at once; ``None`` removes a statement."""
        module = self.module.visit(_Edit(changes))
        assert isinstance(module, cst.Module)
        return module

    def code(self, node: cst.CSTNode) -> str:
        return self.module.code_for_node(node)

    def ancestors(self, node: cst.CSTNode) -> Iterable[cst.CSTNode]:
        while node in self.parents:
            node = self.parents[node]
            yield node


class _Edit(cst.CSTTransformer):
    def __init__(self, changes: dict[cst.CSTNode, cst.CSTNode | None]) -> None:
        super().__init__()
        self.changes = changes

    def on_leave(  # type: ignore[override]
        self, original_node: cst.CSTNode, updated_node: cst.CSTNode
    ) -> cst.CSTNode | cst.RemovalSentinel:
        if original_node in self.changes:
            new = self.changes[original_node]
            return cst.RemovalSentinel.REMOVE if new is None else new
        return updated_node


def finish(module: cst.Module, add: Iterable[str] = (), remove: Iterable[tuple[str, str | None]] = ()) -> str:
    """Add needed imports and drop ones the rewrite left unused."""
    ctx = CodemodContext()
    for mod in add:
        AddImportsVisitor.add_needed_import(ctx, mod)
    for mod, obj in remove:
        RemoveImportsVisitor.remove_unused_import(ctx, mod, obj)
    module = AddImportsVisitor(ctx).transform_module(module)
    return RemoveImportsVisitor(ctx).transform_module(module).code


def kwarg(call: cst.Call, name: str) -> cst.Arg | None:
    return next((a for a in call.args if a.keyword is not None and a.keyword.value == name), None)


def is_true(arg: cst.Arg | None) -> bool:
    return arg is not None and isinstance(arg.value, cst.Name) and arg.value.value == "True"


def with_kwarg(call: cst.Call, name: str, value: cst.BaseExpression) -> cst.Call:
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


def str_literal(value: str) -> cst.SimpleString:
    return cst.SimpleString(f'"{value}"' if '"' not in value and "\\" not in value else repr(value))


def from_import(func: cst.BaseExpression, module: str) -> tuple[str, str | None]:
    """The import to drop if the rewrite leaves it unused (``from m import x`` vs ``import m``)."""
    if isinstance(func, cst.Name):
        return module, func.value
    return module, None
