"""Workspace archives as file trees: read one, diff two as a git patch, write one into a folder.

What ``cadre result --workspace/--patch`` and ``CadreClient.download_workspace``
/ ``workspace_patch`` are built on. An archive comes from the object store,
written by agents that handled untrusted code, so reading it is bounded (member
count, total size), only regular files are kept, and every path must stay
inside the tree. Writing refuses a path that would land outside the target
folder, including through a symlink already in it.
"""

from __future__ import annotations

import difflib
import io
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from shared.contract.errors import CadreError

__all__ = [
    "MAX_FILES",
    "MAX_TOTAL_BYTES",
    "FileChange",
    "UnsafeWorkspace",
    "read_tree",
    "git_patch",
    "changed_files",
    "write_tree",
]

MAX_FILES = 20_000
MAX_TOTAL_BYTES = 512 * 1024 * 1024  # uncompressed; a gzip bomb stops here, not in memory


class UnsafeWorkspace(CadreError):
    """An archive or a target folder that cannot be used safely (the message says why)."""


@dataclass(frozen=True)
class FileChange:
    """One file that differs between two trees, with its line counts (``binary``: not text)."""

    path: str
    status: str  # added | modified | deleted
    added: int
    removed: int
    binary: bool = False


def _safe_name(name: str) -> str:
    path = PurePosixPath(name)
    parts = [p for p in path.parts if p not in ("", ".")]
    if path.is_absolute() or not parts or ".." in parts or "\\" in name:
        raise UnsafeWorkspace(f"workspace member {name!r} is not a relative path inside the workspace")
    return "/".join(parts)


def read_tree(data: bytes) -> dict[str, bytes]:
    """The regular files of a tar.gz workspace as ``{relative posix path: content}``.

    Folders are implied; links, devices and other member kinds, absolute or
    ``..`` paths, more than ``MAX_FILES`` files or more than ``MAX_TOTAL_BYTES``
    of content raise ``UnsafeWorkspace``.
    """
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                if member.isdir():
                    _safe_name(member.name)
                    continue
                if not member.isfile():
                    raise UnsafeWorkspace(f"workspace member {member.name!r} is not a regular file")
                name = _safe_name(member.name)
                total += member.size
                if len(files) >= MAX_FILES or total > MAX_TOTAL_BYTES:
                    raise UnsafeWorkspace(
                        f"workspace is larger than {MAX_FILES} files / {MAX_TOTAL_BYTES} bytes"
                    )
                handle = tar.extractfile(member)
                files[name] = handle.read() if handle is not None else b""
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise UnsafeWorkspace(f"workspace archive is unreadable: {exc}") from exc
    return files


def _text(data: bytes) -> list[str] | None:
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8").splitlines(keepends=True)
    except UnicodeDecodeError:
        return None


def _hunks(old: list[str], new: list[str], path: str) -> list[str]:
    out: list[str] = []
    a = f"a/{path}" if old else "/dev/null"
    b = f"b/{path}" if new else "/dev/null"
    for line in difflib.unified_diff(old, new, a, b, n=3):
        if line.startswith(("---", "+++")) and not line.endswith("\n"):
            line += "\n"
        if not line.endswith("\n"):  # the file's last line has no newline: say so, as git does
            line += "\n\\ No newline at end of file\n"
        out.append(line)
    return out


def git_patch(before: dict[str, bytes], after: dict[str, bytes]) -> str:
    """A unified diff from ``before`` to ``after`` that ``git apply`` (and ``patch -p1``) accept.

    Files sort by path. A binary file that changed is named with git's
    ``Binary files ... differ`` line (no content: ``git apply`` refuses it, the
    downloaded tree has it).
    """
    out: list[str] = []
    for path in sorted(before.keys() | after.keys()):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        header = [f"diff --git a/{path} b/{path}\n"]
        if old is None:
            header.append("new file mode 100644\n")
        elif new is None:
            header.append("deleted file mode 100644\n")
        old_lines, new_lines = _text(old or b""), _text(new or b"")
        if old_lines is None or new_lines is None:
            a = f"a/{path}" if old is not None else "/dev/null"
            b = f"b/{path}" if new is not None else "/dev/null"
            out += [*header, f"Binary files {a} and {b} differ\n"]
            continue
        out += header + _hunks(old_lines, new_lines, path)
    return "".join(out)


def changed_files(before: dict[str, bytes], after: dict[str, bytes]) -> list[FileChange]:
    """Per file: added / modified / deleted and how many lines went in and out."""
    changes: list[FileChange] = []
    for path in sorted(before.keys() | after.keys()):
        old, new = before.get(path), after.get(path)
        if old == new:
            continue
        status = "added" if old is None else "deleted" if new is None else "modified"
        old_lines, new_lines = _text(old or b""), _text(new or b"")
        if old_lines is None or new_lines is None:
            changes.append(FileChange(path, status, 0, 0, binary=True))
            continue
        plus = minus = 0
        for line in difflib.unified_diff(old_lines, new_lines, n=0):
            if line.startswith("+") and not line.startswith("+++"):
                plus += 1
            elif line.startswith("-") and not line.startswith("---"):
                minus += 1
        changes.append(FileChange(path, status, plus, minus))
    return changes


def write_tree(files: dict[str, bytes], dest: Path, *, force: bool = False) -> list[Path]:
    """Write ``files`` below ``dest`` and return the paths written.

    ``dest`` is created when missing. An existing, non-empty ``dest`` is refused
    unless ``force``; with ``force`` same-named files are overwritten and
    nothing else in ``dest`` is touched (no file is deleted). A path that would
    resolve outside ``dest`` (``..``, absolute, or through a symlink inside
    ``dest``) raises ``UnsafeWorkspace`` before anything is written.
    """
    if dest.exists() and not dest.is_dir():
        raise UnsafeWorkspace(f"{dest} exists and is not a folder")
    if dest.is_dir() and any(dest.iterdir()) and not force:
        raise UnsafeWorkspace(f"{dest} is not empty: choose an empty or new folder, or pass --force")
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    plan: list[tuple[Path, bytes]] = []
    for name, data in sorted(files.items()):
        target = root / _safe_name(name)
        if not target.resolve().is_relative_to(root) or target.is_symlink():
            raise UnsafeWorkspace(f"refusing to write {name!r}: it resolves outside {dest}")
        if target.exists() and not target.is_file():
            raise UnsafeWorkspace(f"refusing to write {name!r}: {target} exists and is not a file")
        plan.append((target, data))
    written: list[Path] = []
    for target, data in plan:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.cadre-tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        written.append(target)
    return written
