"""Which bandit rule each syntax-tree rewrite handles, and the rule ids fixable at all."""

from __future__ import annotations

from collections.abc import Callable

from shared.tools.fixes.calls import fix_debug, fix_request_timeout, fix_yaml_load
from shared.tools.fixes.hashing import fix_weak_hash
from shared.tools.fixes.model import Plan, Site
from shared.tools.fixes.secrets_random import fix_hardcoded_secret, fix_random
from shared.tools.fixes.shell import fix_shell
from shared.tools.fixes.tree import Tree

__all__ = ["BANDIT_REWRITES", "SUPPORTED_RULES"]


BANDIT_REWRITES: dict[str, Callable[[Site, Tree], Plan]] = {
    "B506": fix_yaml_load,
    "B602": fix_shell,
    "B604": fix_shell,
    "B113": fix_request_timeout,
    "B324": fix_weak_hash,
    "B303": fix_weak_hash,
    "B105": fix_hardcoded_secret,
    "B106": fix_hardcoded_secret,
    "B201": fix_debug,
    "B311": fix_random,
}
SUPPORTED_RULES = frozenset({*(f"bandit:{code}" for code in BANDIT_REWRITES), "ruff:*"})
"""Rule ids with a rewrite (``ruff:*``: any ruff rule with a safe automatic fix)."""
