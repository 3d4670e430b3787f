"""B602/B604: ``subprocess.*(<literal command>, shell=True)`` -> an argument list with ``shell=False``.

Only when the shell would do nothing but split words: pipes, redirection,
variables, globs, builtins or a command built at run time are left unfixable.
"""

from __future__ import annotations

import re
import shlex

import libcst as cst

from shared.tools.fixes.model import Candidate, Plan, Site, Unfixable
from shared.tools.fixes.tree import Tree, finish, is_true, kwarg, str_literal, with_kwarg

__all__ = ["fix_shell"]


_SHELL_META = set("|&;<>()$`\\*?[]{}~#!\n\r")
_SHELL_BUILTINS = frozenset(
    "cd export source . alias set unset exit exec eval if then for while until case function "
    "ulimit umask read trap wait shift return local declare readonly".split()
)
_SUBPROCESS = frozenset(f"subprocess.{n}" for n in ("run", "call", "check_call", "check_output", "Popen"))


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
    """The argv a shell would build from a literal command, or Unfixable when that needs a shell."""
    if isinstance(node, cst.SimpleString):
        value = node.evaluated_value
        if not isinstance(value, str):
            raise Unfixable("the command is a bytes literal")
        if _needs_shell(value):
            raise Unfixable(f"the command {value!r} uses shell syntax (pipes, redirects, variables, globs)")
        try:
            words = shlex.split(value)
        except ValueError as exc:
            raise Unfixable(f"the command {value!r} does not split: {exc}") from exc
        tokens: list[cst.BaseExpression] = [str_literal(t) for t in words]
    elif isinstance(node, cst.FormattedString):
        template, exprs = "", list[cst.BaseExpression]()
        for part in node.parts:
            if isinstance(part, cst.FormattedStringText):
                if _SHELL_META & set(part.value) or {"'", '"'} & set(part.value):
                    raise Unfixable("the f-string command uses shell syntax or quoting")
                template += part.value
            elif isinstance(part, cst.FormattedStringExpression):
                if part.conversion is not None or part.format_spec is not None:
                    raise Unfixable("the f-string command formats a value with a conversion or spec")
                template += f"\0{len(exprs)}\0"
                exprs.append(part.expression)
        words = template.split()
        tokens = []
        for word in words:
            hit = re.fullmatch(r"\0(\d+)\0", word)
            if hit:
                tokens.append(cst.Call(cst.Name("str"), [cst.Arg(exprs[int(hit.group(1))])]))
            elif "\0" in word:
                raise Unfixable(
                    "a value is glued to other text in one shell word; splitting it changes meaning"
                )
            else:
                tokens.append(str_literal(word))
    elif isinstance(node, cst.List | cst.Tuple):
        raise Unfixable(
            "with shell=True only the first item of a list runs (the rest become shell arguments); "
            "dropping the shell changes what runs, so it needs a decision by hand"
        )
    else:
        raise Unfixable(
            "the command is built at run time (not a literal), so it cannot be split statically; "
            "pass an argument list with shell=False by hand"
        )
    if not words or words[0] in _SHELL_BUILTINS or "=" in words[0]:
        raise Unfixable("the command needs a shell (empty, a shell builtin or a variable assignment)")
    return tokens


def fix_shell(site: Site, tree: Tree) -> Plan:
    call = tree.call_at(site.line, lambda c: is_true(kwarg(c, "shell")))
    names = tree.qualnames(call.func)
    if not names & _SUBPROCESS:
        raise Unfixable(f"shell=True is passed to {tree.code(call.func)}, whose meaning of it is unknown")
    cmd = next((a for a in call.args if a.keyword is None or a.keyword.value == "args"), None)
    if cmd is None:
        raise Unfixable("the call has no command argument")
    argv = cst.List([cst.Element(t) for t in _command_list(cmd.value)])
    new = with_kwarg(call, "shell", cst.Name("False"))
    new = new.with_changes(args=[a.with_changes(value=argv) if a is cmd else a for a in new.args])
    text = finish(tree.replace(call, new))
    desc = f"{tree.code(cmd.value)} with shell=True -> {tree.code(argv)} with shell=False: no shell parses the values"
    return Plan([Candidate(text, desc)])
