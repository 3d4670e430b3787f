"""Workspaces as archives: deterministic packing, safe unpacking (with and without tarfile filters)."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest

from shared.contract.workspace import UnpackLimits, WorkspaceRefused, inspect, pack_dir, pack_files, unpack_to


def _evil_archive() -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        info = tarfile.TarInfo("../escape.py")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    return raw.getvalue()


def test_packing_is_deterministic_and_skips_caches(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("A = 1\n")
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "a.pyc").write_bytes(b"\0")
    assert pack_dir(tmp_path) == pack_dir(tmp_path)
    out = tmp_path.parent / "out"
    unpack_to(pack_dir(tmp_path), out)
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == ["pkg/a.py"]


@pytest.mark.parametrize("with_filters", [True, False])
def test_unpacking_refuses_paths_that_escape(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, with_filters: bool
) -> None:
    if not with_filters:  # Debian bookworm's python3 (3.11.2) has no tarfile.data_filter
        monkeypatch.delattr(tarfile, "data_filter")
    dest = tmp_path / "ws"
    unpack_to(pack_files({"a.py": "A = 1\n"}), dest)
    assert (dest / "a.py").read_text() == "A = 1\n"
    with pytest.raises((ValueError, tarfile.TarError)):
        unpack_to(_evil_archive(), tmp_path / "ws2")
    assert not (tmp_path / "escape.py").exists()


def test_inline_files_must_stay_inside_the_workspace() -> None:
    with pytest.raises(ValueError, match="relative"):
        pack_files({"../x.py": ""})


# --- limits: counted while reading, so a bomb stops at the limit ------------------------------------


def _archive(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return gzip.compress(raw.getvalue(), mtime=0)


def _zeros_bomb(size: int) -> bytes:
    """One file of ``size`` zero bytes, compressed as it is written (never ``size`` bytes in memory)."""
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=0) as gz:
        info = tarfile.TarInfo("zeros.bin")
        info.size = size
        gz.write(info.tobuf())
        chunk = bytes(1 << 20)
        for _ in range(size // len(chunk)):
            gz.write(chunk)
        gz.write(bytes(1024))
    return out.getvalue()


def test_a_bomb_is_refused_at_its_header_and_nothing_is_written(tmp_path: Path) -> None:
    bomb = _zeros_bomb(256 << 20)  # 256 MiB of zeros
    assert len(bomb) < 512 * 1024  # about 250 KB packed
    with pytest.raises(WorkspaceRefused, match="unpacks to more than 67108864 bytes"):
        unpack_to(bomb, tmp_path / "ws")
    assert list((tmp_path / "ws").iterdir()) == []
    with pytest.raises(WorkspaceRefused, match="unpacks to more than"):
        inspect(bomb)


def test_the_unpacked_total_counts_across_files_and_stops_at_the_first_over(tmp_path: Path) -> None:
    limits = UnpackLimits(max_unpacked_bytes=1000)
    files = {f"f{n}.txt": "x" * 300 for n in range(5)}
    with pytest.raises(WorkspaceRefused, match=r"more than 1000 bytes \(at 'f3.txt', file 4\)"):
        unpack_to(pack_files(files), tmp_path / "ws", limits)
    assert sorted(p.name for p in (tmp_path / "ws").iterdir()) == ["f0.txt", "f1.txt", "f2.txt"]


def test_the_file_count_and_the_packed_size_are_limited() -> None:
    archive = pack_files({f"f{n}.py": "" for n in range(11)})
    with pytest.raises(WorkspaceRefused, match="more than 10 files"):
        inspect(archive, UnpackLimits(max_files=10))
    assert inspect(archive, UnpackLimits(max_files=11)).files == 11
    with pytest.raises(WorkspaceRefused, match=f"archive is {len(archive)} bytes; the limit is 100"):
        inspect(archive, UnpackLimits(max_packed_bytes=100))


def test_a_huge_pax_header_cannot_exhaust_memory_the_stream_itself_is_capped() -> None:
    # a member whose pax header claims megabytes of metadata: tarfile would read it all into memory
    info = tarfile.TarInfo("a.py")
    info.pax_headers = {"comment": "c" * (3 << 20)}
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(b""))
    bomb = gzip.compress(raw.getvalue(), mtime=0)
    with pytest.raises(WorkspaceRefused, match="stopped there"):
        inspect(bomb, UnpackLimits(max_unpacked_bytes=1 << 20, max_files=10))


@pytest.mark.parametrize("kind", ["symlink", "hardlink", "fifo", "absolute"])
def test_links_devices_and_absolute_paths_are_refused(tmp_path: Path, kind: str) -> None:
    info = tarfile.TarInfo("/etc/x" if kind == "absolute" else "x")
    data = b""
    if kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    elif kind == "hardlink":
        info.type, info.linkname = tarfile.LNKTYPE, "a.py"
    elif kind == "fifo":
        info.type = tarfile.FIFOTYPE
    else:
        data = b"x"
        info.size = 1
    with pytest.raises(WorkspaceRefused, match="unsafe workspace member"):
        unpack_to(_archive([(info, data)]), tmp_path / "ws")


def test_garbage_is_refused_as_not_an_archive(tmp_path: Path) -> None:
    with pytest.raises(WorkspaceRefused, match="not a readable tar.gz"):
        unpack_to(b"not gzip at all", tmp_path / "ws")


def test_unpacking_reports_what_it_wrote(tmp_path: Path) -> None:
    stats = unpack_to(pack_files({"a.py": "A = 1\n", "pkg/b.py": "B = 2\n"}), tmp_path / "ws")
    assert (stats.files, stats.unpacked_bytes) == (2, 12)
    assert (tmp_path / "ws" / "pkg" / "b.py").read_text() == "B = 2\n"
