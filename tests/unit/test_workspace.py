"""Workspaces as archives: deterministic packing, safe unpacking (with and without tarfile filters)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from shared.workspace import pack_dir, pack_files, unpack_to


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
