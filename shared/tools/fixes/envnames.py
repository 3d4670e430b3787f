"""Environment variable names for secrets moved out of the code: one per distinct secret.

A hard-coded secret becomes ``os.environ["<NAME>"]``. The name comes from where
the secret is: the first folder that names something (``src/``, ``apps/`` and
the like are skipped; at the top level, the module) and the name it was
assigned to, e.g. ``AUTH_API_SECRET_KEY``, ``BILLING_SECRET_KEY`` for
``apps/billing/settings.py``. ``EnvNames`` remembers, for one fix run, which
secret each name stands for, so two different secrets never share a name:

- another file already uses the name: the module path is spelt out
  (``SHOP_API_SECRET_KEY`` beside ``SHOP_SECRET_KEY``);
- a secret passed to a call is named with the call's other words
  (``User(username="alice", password=...)`` -> ``SEED_ALICE_PASSWORD``), and so
  is another secret of the same file with a name already taken there;
- otherwise a number (``..._PASSWORD_2``).

Names the workspace already reads (``os.environ[...]``, ``os.getenv(...)``)
are taken: a new secret never silently reuses a variable the code reads for
something else. The same secret planned twice (a fix retried alone after a
failed test run) gets the same name.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

__all__ = ["EnvNames", "existing_env_names"]


_READ = re.compile(r"""(?:environ(?:\.get)?\s*[\[(]|getenv\s*\()\s*["']([A-Za-z_][A-Za-z0-9_]*)["']""")


def existing_env_names(texts: list[str]) -> set[str]:
    """Environment variable names the given sources already read."""
    return {name for text in texts for name in _READ.findall(text)}


# folders that hold code without saying what it is: the name comes from the next one down
_CONTAINERS = frozenset({"src", "lib", "apps", "app", "packages", "services", "python", "source", "code"})
_GENERIC_STEMS = frozenset({"__init__", "settings", "config", "conf", "configuration", "constants", "main"})


def _place(parts: tuple[str, ...]) -> str:
    """What the file belongs to: its first folder that is not a mere container, else the module."""
    folders = [p for p in parts[:-1] if p.lower() not in _CONTAINERS]
    if folders:
        return folders[0]
    if parts[-1] not in _GENERIC_STEMS or len(parts) == 1:
        return parts[-1] if parts[-1] != "__init__" else "app"
    return parts[-2]


def _word(text: str) -> str:
    return re.sub(r"_+", "_", re.sub(r"\W", "_", text)).strip("_").upper()


class EnvNames:
    """The names handed out in one fix run, and the secret each stands for."""

    def __init__(self, taken: set[str] | None = None) -> None:
        self._owner: dict[str, tuple[str, str, str] | None] = dict.fromkeys(taken or set())

    def name_for(
        self, rel: str, target: str, value: str, hints: Sequence[str] = (), *, hints_first: bool = False
    ) -> str:
        """The variable for the secret ``value`` assigned to ``target`` in file ``rel``.

        ``hints`` are words of the statement (e.g. the other string arguments of
        the call) used to tell apart several secrets of one file; with
        ``hints_first`` the first hint names the variable even without a clash
        (``User(username="alice", password=...)`` -> ``SEED_ALICE_PASSWORD``).
        """
        owner = (rel, target, value)
        parts = Path(rel).with_suffix("").parts
        top = _word(_place(parts))
        base = _word(target)
        short = base if base.startswith(top + "_") else f"{top}_{base}"
        path = "_".join(_word(p) for p in parts if p != "__init__")
        long_ = base if base.startswith(path + "_") else f"{path}_{base}"
        words = [_word(h) for h in hints]
        by_hint = [f"{top}_{w}_{base}" for w in words if w and len(w) <= 24 and w != base]
        holder = self._owner.get(short)
        same_file = holder is not None and holder[0] == rel
        if hints_first:
            tries = [*by_hint, short, long_]
        else:
            tries = [short, *by_hint, long_] if same_file else [short, long_, *by_hint]
        tries += [f"{short}_{n}" for n in range(2, 100)]
        for name in tries:
            if name not in self._owner:
                self._owner[name] = owner
                return name
            if self._owner[name] == owner:
                return name
        raise ValueError(f"no free environment variable name for {target} in {rel}")
