"""Code workspaces as deterministic tar.gz archives (carried through the object store)."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

__all__ = ["pack_dir", "unpack_to", "pack_files", "SKIP_DIRS"]

SKIP_DIRS = frozenset(
    {".git", ".venv", "venv", "__pycache__", ".pytest_cache", ".mypy_cache", ".ruff_cache", "node_modules"}
)
_SKIP_FILES = frozenset({".coverage"})


def _files(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if any(part in SKIP_DIRS for part in rel.parts) or path.name in _SKIP_FILES:
            continue
        if path.is_file() and not path.is_symlink():
            out.append(path)
    return out


def _archive(entries: list[tuple[str, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for name, data in entries:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    # mtime=0: the same files always give the same bytes (and the same artifact hash)
    return gzip.compress(raw.getvalue(), mtime=0)


def pack_dir(root: Path) -> bytes:
    """Pack a folder (skipping caches and VCS data) into tar.gz bytes."""
    return _archive([(p.relative_to(root).as_posix(), p.read_bytes()) for p in _files(root)])


def pack_files(files: dict[str, str]) -> bytes:
    """Pack inline ``{path: content}`` files, as a plain-JSON client may send them."""
    for name in files:
        if name.startswith("/") or ".." in Path(name).parts:
            raise ValueError(f"file path {name!r} must be relative and stay inside the workspace")
    return _archive([(name, content.encode()) for name, content in sorted(files.items())])


def unpack_to(data: bytes, dest: Path) -> None:
    """Unpack tar.gz bytes into ``dest``, refusing paths that escape it."""
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        if hasattr(tarfile, "data_filter"):  # 3.11.4+ (PEP 706)
            tar.extractall(dest, filter="data")
            return
        # Debian bookworm's python3 is 3.11.2: no extraction filters. Regular files and
        # folders only, every path checked to stay inside dest.
        root = dest.resolve()
        for member in tar.getmembers():
            target = (root / member.name).resolve()
            if not target.is_relative_to(root) or not (member.isfile() or member.isdir()):
                raise ValueError(f"unsafe workspace member {member.name!r}")
        tar.extractall(dest)  # noqa: S202 - every member checked above
