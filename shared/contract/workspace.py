"""Code workspaces as deterministic tar.gz archives (carried through the object store).

Archives come from clients and agents, so they are untrusted: unpacking takes
regular files and folders only, keeps every path inside the destination, and
counts files and bytes as it reads (``UnpackLimits``), stopping a
decompression bomb at the limit rather than after it.
"""

from __future__ import annotations

import gzip
import io
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "pack_dir",
    "unpack_to",
    "pack_files",
    "inspect",
    "UnpackLimits",
    "WorkspaceStats",
    "WorkspaceRefused",
    "SKIP_DIRS",
]

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


@dataclass(frozen=True)
class UnpackLimits:
    """Bounds on one workspace archive: packed bytes, unpacked bytes, file count.

    The unpacked size and the file count are counted while the archive is
    read, so a decompression bomb stops at the limit instead of filling the disk.
    """

    max_packed_bytes: int = 16 * 1024 * 1024
    max_unpacked_bytes: int = 64 * 1024 * 1024
    max_files: int = 5_000

    @classmethod
    def from_settings(cls, settings: Any) -> UnpackLimits:
        """The deployment's limits (``CADRE_MAX_WORKSPACE_BYTES``, ``..._UNPACKED_BYTES``, ``..._FILES``)."""
        return cls(
            max_packed_bytes=settings.max_workspace_bytes,
            max_unpacked_bytes=settings.max_unpacked_bytes,
            max_files=settings.max_workspace_files,
        )

    @property
    def max_stream_bytes(self) -> int:
        # tar headers (512 B each, plus pax/long-name records) and end padding on top of the data
        return self.max_unpacked_bytes + 2048 * (self.max_files + 2) + 1024 * 1024


@dataclass(frozen=True)
class WorkspaceStats:
    """What a workspace archive holds: regular files and their total size."""

    files: int
    unpacked_bytes: int


class WorkspaceRefused(ValueError):
    """A workspace archive over a limit or with an unsafe member."""


class _Capped(io.RawIOBase):
    """A read-only stream that refuses to yield more than ``cap`` decompressed bytes."""

    def __init__(self, inner: gzip.GzipFile, cap: int) -> None:
        self._inner = inner
        self._cap = cap
        self._read = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer)
        room = self._cap + 1 - self._read  # one byte past the cap tells "too big" from "exactly"
        n = self._inner.readinto(view[: max(1, min(len(view), room))])
        self._read += n
        if self._read > self._cap:
            raise WorkspaceRefused(f"workspace unpacks to more than {self._cap} bytes (stopped there)")
        return n


def _members(tar: tarfile.TarFile, limits: UnpackLimits) -> Iterator[tarfile.TarInfo]:
    """Each member in archive order, refusing the archive at the first limit or unsafe member."""
    files = 0
    total = 0
    for member in tar:
        if not (member.isfile() or member.isdir()):
            raise WorkspaceRefused(f"unsafe workspace member {member.name!r}: only files and folders")
        path = Path(member.name)
        if path.is_absolute() or ".." in path.parts:
            raise WorkspaceRefused(f"unsafe workspace member {member.name!r}: path escapes the workspace")
        if member.isfile():
            files += 1
            total += member.size
            if files > limits.max_files:
                raise WorkspaceRefused(f"workspace has more than {limits.max_files} files")
            if total > limits.max_unpacked_bytes:
                raise WorkspaceRefused(
                    f"workspace unpacks to more than {limits.max_unpacked_bytes} bytes "
                    f"(at {member.name!r}, file {files})"
                )
        yield member


def _open(data: bytes, limits: UnpackLimits) -> tarfile.TarFile:
    if len(data) > limits.max_packed_bytes:
        raise WorkspaceRefused(
            f"workspace archive is {len(data)} bytes; the limit is {limits.max_packed_bytes}"
        )
    stream = _Capped(gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb"), limits.max_stream_bytes)
    # "r|": a forward-only stream, so nothing is read past the member being checked
    return tarfile.open(fileobj=io.BufferedReader(stream), mode="r|")


def inspect(data: bytes, limits: UnpackLimits = UnpackLimits()) -> WorkspaceStats:
    """Check a tar.gz workspace against ``limits`` without writing anything; raise ``WorkspaceRefused``."""
    files = total = 0
    try:
        with _open(data, limits) as tar:
            for member in _members(tar, limits):
                if member.isfile():
                    files += 1
                    total += member.size
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise WorkspaceRefused(f"workspace is not a readable tar.gz archive: {exc}") from exc
    return WorkspaceStats(files=files, unpacked_bytes=total)


def unpack_to(data: bytes, dest: Path, limits: UnpackLimits = UnpackLimits()) -> WorkspaceStats:
    """Unpack tar.gz bytes into ``dest``: files and folders only, inside ``dest``, within ``limits``.

    Refused archives raise ``WorkspaceRefused``; what was written before the
    limit was reached stays in ``dest`` for the caller to remove.
    """
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    files = total = 0
    try:
        with _open(data, limits) as tar:
            for member in _members(tar, limits):
                target = (root / member.name).resolve()
                if not target.is_relative_to(root):
                    raise WorkspaceRefused(
                        f"unsafe workspace member {member.name!r}: path escapes the workspace"
                    )
                if hasattr(tarfile, "data_filter"):  # 3.11.4+ (PEP 706): the library's own checks too
                    tar.extract(member, root, filter="data")
                else:  # Debian bookworm's 3.11.2: every member was checked above
                    tar.extract(member, root)  # noqa: S202
                if member.isfile():
                    files += 1
                    total += member.size
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        raise WorkspaceRefused(f"workspace is not a readable tar.gz archive: {exc}") from exc
    return WorkspaceStats(files=files, unpacked_bytes=total)
