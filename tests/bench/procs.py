"""CPU time and resident size of process trees, read from ``/proc`` (Linux).

The benchmark charges every system with the CPU of all its processes (servers,
workers, prefork children) and reports each process's RSS, so the comparison
covers the whole deployment and not only the Python services.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ProcSample", "cpu_seconds", "rss_kib", "tree", "sample"]

_TICKS = os.sysconf("SC_CLK_TCK")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name may hold spaces and parentheses: split after its last ')'
    return raw[raw.rfind(")") + 2 :].split()


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process (0 once it is gone)."""
    fields = _stat_fields(pid)
    if fields is None:
        return 0.0
    # after the name: state(0) ppid(1) ... utime(11) stime(12)
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_kib(pid: int) -> int:
    """Resident set size in KiB (0 once the process is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def _name(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return "?"


def tree(roots: list[int]) -> list[int]:
    """``roots`` and all their live descendants (prefork children, helper processes)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [r for r in roots if Path(f"/proc/{r}").exists()]
    while todo:
        pid = todo.pop()
        if pid in out:
            continue
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


@dataclass(frozen=True)
class ProcSample:
    """One process: what it is, its CPU seconds so far and its RSS."""

    label: str
    pid: int
    cpu: float
    rss_kib: int


def sample(labelled: dict[int, str]) -> list[ProcSample]:
    """Every process of the labelled roots' trees; a child is labelled ``<root label>/<comm>``."""
    out = []
    for root, label in labelled.items():
        for pid in tree([root]):
            name = label if pid == root else f"{label}/{_name(pid)}"
            out.append(ProcSample(name, pid, cpu_seconds(pid), rss_kib(pid)))
    return out
