"""mtrl._atomic: saves are durable (fsynced before and after their renames), not only atomic.

The swap itself (old copy kept on errors, recovery of a copy left aside, leftovers removed) is
tested through its users in tests/test_replay.py and tests/test_train.py."""

import os
import shutil
from pathlib import Path

import pytest

import mtrl._atomic
from mtrl._atomic import replace_dir, replace_file


pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self/fd"),
                                reason="names a descriptor's path through /proc/self/fd")


class DiskLog:
    """Records, in order, which paths ``os.fsync`` synced and the renames, replacements and
    tree removals, then does them for real."""

    def __init__(self, monkeypatch):
        self.events: list[tuple[str, ...]] = []
        real_fsync = os.fsync
        real_rename, real_replace, real_rmtree = os.rename, os.replace, shutil.rmtree

        def fsync(fd):
            real_fsync(fd)
            self.events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))

        def rename(src, dst):
            self.events.append(("rename", os.fspath(src), os.fspath(dst)))
            real_rename(src, dst)

        def replace(src, dst):
            self.events.append(("replace", os.fspath(src), os.fspath(dst)))
            real_replace(src, dst)

        def rmtree(path, *args, **kw):
            self.events.append(("rmtree", os.fspath(path)))
            real_rmtree(path, *args, **kw)

        monkeypatch.setattr(os, "fsync", fsync)
        monkeypatch.setattr(os, "rename", rename)
        monkeypatch.setattr(os, "replace", replace)
        monkeypatch.setattr(mtrl._atomic.shutil, "rmtree", rmtree)

    def index(self, *event) -> int:
        return self.events.index(tuple(os.fspath(e) for e in event))

    def moves(self) -> list[int]:
        return [k for k, e in enumerate(self.events) if e[0] in ("rename", "replace")]


def _write_tree(written):
    """A ``write`` for replace_dir: files at three depths; records what it wrote."""
    def write(tmp: Path) -> None:
        (tmp / "sub" / "deeper").mkdir(parents=True)
        for rel in ("a.bin", "sub/b.bin", "sub/deeper/c.bin"):
            (tmp / rel).write_bytes(rel.encode() * 1000)
        written[:] = [tmp, tmp / "sub", tmp / "sub" / "deeper",
                      tmp / "a.bin", tmp / "sub" / "b.bin", tmp / "sub" / "deeper" / "c.bin"]
    return write


@pytest.mark.parametrize("existing", [False, True], ids=["new", "over-an-old-copy"])
def test_replace_dir_syncs_the_new_copy_before_the_renames_and_the_parent_after(
        tmp_path, monkeypatch, existing):
    # A rename orders nothing on disk: without these fsyncs a power loss just after a save can
    # leave the renamed-in copy with empty or truncated files, the old copy already deleted.
    final = Path(os.path.realpath(tmp_path)) / "save"
    if existing:
        final.mkdir()
        (final / "a.bin").write_bytes(b"old")
    written: list[Path] = []
    log = DiskLog(monkeypatch)
    replace_dir(final, _write_tree(written))
    assert (final / "sub" / "deeper" / "c.bin").read_bytes() == b"sub/deeper/c.bin" * 1000
    moves = log.moves()
    assert len(moves) == (2 if existing else 1)
    for path in written:  # every file and directory of the new copy, the copy itself included
        assert log.index("fsync", path) < moves[0], path
    parent_synced = log.index("fsync", tmp_path)
    assert parent_synced > moves[-1]  # the renames themselves are on disk ...
    if existing:  # ... before the old copy is removed
        aside = log.events[moves[0]][2]
        assert parent_synced < log.index("rmtree", aside)
        assert not os.path.exists(aside)


def test_replace_dir_syncs_a_parent_it_created_in_its_own_parent(tmp_path, monkeypatch):
    root = Path(os.path.realpath(tmp_path))
    log = DiskLog(monkeypatch)
    replace_dir(root / "checkpoints" / "iter_1", _write_tree([]))
    last = log.moves()[-1]
    assert log.index("fsync", root / "checkpoints") > last
    assert log.index("fsync", root) > last  # the new "checkpoints" entry is on disk too


def test_replace_dir_skips_directory_syncs_where_directories_cannot_be_opened(
        tmp_path, monkeypatch):
    # Windows: os.open on a directory fails; the files are still synced, the save succeeds.
    real_open = os.open

    def open_(path, flags, *args, **kw):
        if os.path.isdir(path):
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, flags, *args, **kw)

    monkeypatch.setattr(os, "open", open_)
    written: list[Path] = []
    log = DiskLog(monkeypatch)
    replace_dir(tmp_path / "save", _write_tree(written))
    synced = {e[1] for e in log.events if e[0] == "fsync"}
    assert synced == {os.fspath(p) for p in written if p.suffix == ".bin"}
    assert (tmp_path / "save" / "a.bin").read_bytes() == b"a.bin" * 1000


def test_replace_file_syncs_the_new_file_before_the_replace_and_the_directory_after(
        tmp_path, monkeypatch):
    path = Path(os.path.realpath(tmp_path)) / "config.json"
    path.write_text("old")
    log = DiskLog(monkeypatch)
    replace_file(path, '{"new": 1}')
    assert path.read_text() == '{"new": 1}'
    (move,) = log.moves()
    tmp = log.events[move][1]
    assert log.index("fsync", tmp) < move < log.index("fsync", tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]


def test_replace_file_keeps_the_old_file_when_the_write_fails(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    path.write_text("old")

    def fsync(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(OSError, match="No space left"):
        replace_file(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # the temp file was removed
