"""Workspace trees: reading untrusted archives, git patches that `git apply` takes, safe writing."""

from __future__ import annotations

import gzip
import io
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from shared.client.wstree import UnsafeWorkspace, changed_files, git_patch, read_tree, write_tree
from shared.contract.workspace import pack_dir, pack_files

BEFORE = {
    "app/passwords.py": "import hashlib\n\ndef h(p):\n    return hashlib.md5(p.encode()).hexdigest()\n",
    "app/old.py": "gone = True\n",
    "README.md": "no newline at the end",
    "same.txt": "unchanged\n",
}
AFTER = {
    "app/passwords.py": "import hashlib\n\ndef h(p):\n    return hashlib.sha256(p.encode()).hexdigest()\n",
    "app/new.py": "fresh = 1\n",
    "README.md": "no newline at the end, still",
    "same.txt": "unchanged\n",
    "empty.txt": "",
}


def tree(files: dict[str, str]) -> dict[str, bytes]:
    return read_tree(pack_files(files))


def raw_archive(*members: tarfile.TarInfo, data: bytes = b"x") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for m in members:
            tar.addfile(m, io.BytesIO(data) if m.isfile() else None)
    return gzip.compress(buf.getvalue())


def member(name: str, kind: bytes = tarfile.REGTYPE, size: int = 1, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size if kind == tarfile.REGTYPE else 0, link
    return info


def test_a_packed_folder_reads_back_as_the_same_files(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "b.bin").write_bytes(b"\0\1\2")
    assert read_tree(pack_dir(tmp_path)) == {"pkg/a.py": b"x = 1\n", "b.bin": b"\0\1\2"}


@pytest.mark.parametrize(
    "bad",
    [
        member("../escape.py"),
        member("/etc/passwd"),
        member("link", tarfile.SYMTYPE, link="/etc"),
        member("hard", tarfile.LNKTYPE, link="x"),
        member("fifo", tarfile.FIFOTYPE),
    ],
    ids=["dotdot", "absolute", "symlink", "hardlink", "fifo"],
)
def test_archives_with_escaping_paths_or_non_files_are_refused(bad: tarfile.TarInfo) -> None:
    with pytest.raises(UnsafeWorkspace):
        read_tree(raw_archive(bad))


def test_garbage_bytes_are_an_unreadable_archive_not_a_crash() -> None:
    with pytest.raises(UnsafeWorkspace, match="unreadable"):
        read_tree(b"definitely not gzip")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_apply_turns_the_old_tree_into_the_new_one(tmp_path: Path) -> None:
    before, after = tree(BEFORE), tree(AFTER)
    patch = git_patch(before, after)
    assert "same.txt" not in patch
    assert "\\ No newline at end of file" in patch
    work = tmp_path / "work"
    write_tree(before, work)
    (tmp_path / "fix.patch").write_text(patch)
    subprocess.run(["git", "apply", "--check", str(tmp_path / "fix.patch")], cwd=work, check=True)  # noqa: S603, S607
    subprocess.run(["git", "apply", str(tmp_path / "fix.patch")], cwd=work, check=True)  # noqa: S603, S607
    got = {p.relative_to(work).as_posix(): p.read_bytes() for p in work.rglob("*") if p.is_file()}
    assert got == after


def test_changed_files_counts_lines_per_file() -> None:
    changes = {c.path: c for c in changed_files(tree(BEFORE), tree(AFTER))}
    assert set(changes) == {"app/passwords.py", "app/old.py", "app/new.py", "README.md", "empty.txt"}
    assert (changes["app/passwords.py"].status, changes["app/passwords.py"].added) == ("modified", 1)
    assert changes["app/passwords.py"].removed == 1
    assert (changes["app/old.py"].status, changes["app/old.py"].removed) == ("deleted", 1)
    assert (changes["app/new.py"].status, changes["app/new.py"].added) == ("added", 1)


def test_write_tree_refuses_a_non_empty_folder_unless_forced(tmp_path: Path) -> None:
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "mine.txt").write_text("keep me")
    with pytest.raises(UnsafeWorkspace, match="not empty"):
        write_tree({"a.py": b"1"}, dest)
    assert not (dest / "a.py").exists()
    write_tree({"a.py": b"1", "mine.txt": b"theirs"}, dest, force=True)
    assert (dest / "a.py").read_bytes() == b"1" and (dest / "mine.txt").read_bytes() == b"theirs"


def test_write_tree_never_writes_through_a_symlink_out_of_the_folder(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "pkg").symlink_to(outside, target_is_directory=True)
    with pytest.raises(UnsafeWorkspace, match="outside"):
        write_tree({"ok.py": b"1", "pkg/evil.py": b"2"}, dest, force=True)
    assert list(outside.iterdir()) == [] and not (dest / "ok.py").exists()
