"""Poetry's dependency tables (``[tool.poetry.*dependencies]``) as PEP 508 requirements.

Poetry writes constraints in its own syntax (``^1.2``, ``~1.2``, ``*``); the
workspace's environment (``shared.tools.pyenv``) installs PEP 508
requirements, so they are translated here. Git, path and URL dependencies are
not installed (only the package index is), and are listed as ignored.
"""

from __future__ import annotations

from typing import Any

__all__ = ["poetry_requirements", "poetry_constraint"]

_GROUPS = ("test", "tests", "testing", "dev")


def _bump(parts: list[int], at: int) -> str:
    upper = [*parts[:at], parts[at] + 1]
    return ".".join(map(str, upper + [0] * (len(parts) - len(upper))))


def poetry_constraint(text: str) -> str:
    """``^1.2.3`` -> ``>=1.2.3,<2.0.0``; ``~1.2`` -> ``>=1.2,<1.3``; ``*`` -> ``""``; ``1.2`` -> ``==1.2``.

    ``ValueError`` for what it cannot read.
    """
    out = []
    for raw in text.split(","):
        item = raw.strip()
        if item in ("", "*"):
            continue
        if item[0] in "^~" and not item.startswith("~="):
            parts = [int(p) for p in item[1:].strip().split(".")]
            if item[0] == "^":
                first = next((i for i, p in enumerate(parts) if p != 0), len(parts) - 1)
            else:
                first = 0 if len(parts) == 1 else 1
            out.append(f">={'.'.join(map(str, parts))},<{_bump(parts, first)}")
        elif item[0].isdigit():
            out.append(f"=={item}")
        else:
            out.append(item.replace(" ", ""))
    return ",".join(out)


def _one(name: str, spec: object) -> str:
    extras = ""
    if isinstance(spec, dict):
        if any(k in spec for k in ("git", "path", "url", "file")):
            raise ValueError("git/path/url dependency")
        if spec.get("extras"):
            extras = "[" + ",".join(str(e) for e in spec["extras"]) + "]"
        spec = spec.get("version", "*")
    if not isinstance(spec, str):
        raise ValueError("unreadable constraint")
    return f"{name}{extras}{poetry_constraint(spec)}"


def poetry_requirements(pyproject: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The main and test/dev group dependencies of a Poetry project, and what was not read."""
    poetry = pyproject.get("tool", {}).get("poetry", {})
    if not isinstance(poetry, dict):
        return [], []
    tables = [poetry.get("dependencies"), poetry.get("dev-dependencies")]
    groups = poetry.get("group", {})
    if isinstance(groups, dict):
        tables += [groups.get(g, {}).get("dependencies") for g in _GROUPS if isinstance(groups.get(g), dict)]
    reqs: list[str] = []
    ignored: list[str] = []
    for table in tables:
        for name, spec in (table or {}).items() if isinstance(table, dict) else []:
            if name.lower() == "python":
                continue
            try:
                reqs.append(_one(str(name), spec))
            except (ValueError, TypeError) as exc:
                ignored.append(f"pyproject.toml [tool.poetry]: {name}: {exc}")
    return reqs, ignored
