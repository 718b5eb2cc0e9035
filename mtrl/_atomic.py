"""Replace a directory (run checkpoints, replay saves) or a file (a run's config.json) as a
whole: write a sibling, swap it in.

Durability: a rename orders nothing on disk. After a power loss or kernel crash the renamed-in
copy could hold empty or truncated files (their data not yet written back) while the old copy's
removal was: the save would be lost. So the new copy's files and directories are fsynced before
the first rename, and the parent directory after the last one (the renames themselves), before
the old copy is removed.
"""

from __future__ import annotations

import errno
import glob
import os
import re
import secrets
import shutil
import warnings
from pathlib import Path
from typing import Callable

_SUFFIX = re.compile(r"[0-9a-f]{8}")


def _new_sibling(final: Path, kind: str) -> Path:
    """Creates an empty hidden directory ``.<name>.<kind>-XXXXXXXX`` next to ``final``."""
    while True:
        path = final.with_name(f".{final.name}.{kind}-{secrets.token_hex(4)}")
        try:
            path.mkdir()  # default mode (umask), unlike mkdtemp's 0700
            return path
        except FileExistsError:
            continue


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsyncs a directory (its entries: names created, renamed or removed in it). Skipped where a
    directory cannot be opened (Windows) or synced (some network filesystems)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise
    finally:
        os.close(fd)


def fsync_file(path: str | os.PathLike[str]) -> None:
    """fsyncs a regular file's data (written through any descriptor, e.g. by the C++ core)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsyncs every regular file under ``root`` (their data), then every directory, ``root``
    included (their entries)."""
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = os.path.join(dirpath, name)
            if os.path.isfile(path) and not os.path.islink(path):
                fsync_file(path)
    for dirpath, _, _ in os.walk(root):
        fsync_dir(dirpath)


def replace_file(path: str | os.PathLike[str], text: str) -> None:
    """Writes ``text`` to ``path`` (UTF-8) as a whole: a temp file beside it, fsynced, then
    ``os.replace``d in and the directory fsynced. A crash leaves the old or the new file, never
    a truncated one; on an error the old file is left as it was and the temp file removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def replace_dir(final: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Writes a new directory ``final`` with ``write(tmp)`` and swaps it in as a whole.

    ``write`` fills an empty sibling ``.<name>.tmp-*``. Then an existing ``final`` is renamed
    aside (``.<name>.old-*``), the new one renamed in and the old one removed, so a crash at any
    instant leaves a complete old or new copy (between the two renames, under the ``.old-``
    name), power losses included (fsyncs: see the module docstring). On an error the partial
    copy is removed and ``final`` is left, or put back, as it was.
    After a successful swap the leftovers of earlier killed saves of ``final`` are removed
    (``remove_leftovers``); ``recover_dir`` puts back an old copy that such a kill left aside.

    Returns:
      The resolved path of ``final`` (symbolic links followed).
    """
    final = Path(os.path.realpath(final))
    new_parent = not final.parent.is_dir()
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling(final, "tmp")
    try:
        write(tmp)
        _fsync_tree(tmp)  # the new copy is on disk before any rename can expose it
        aside = None
        if not os.path.lexists(final):
            os.rename(tmp, final)
        else:
            aside = _new_sibling(final, "old")
            try:
                os.rename(final, aside)  # replaces the empty placeholder (POSIX directory rename)
            except BaseException:
                aside.rmdir()
                raise
            try:
                os.rename(tmp, final)
            except BaseException:
                os.rename(aside, final)
                raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fsync_dir(final.parent)  # the renames are on disk before the old copy goes
    if new_parent:
        fsync_dir(final.parent.parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    remove_leftovers(final.parent, glob.escape(final.name))
    return final


def _siblings(parent: Path, name: str, kind: str) -> list[Path]:
    """The directories ``.<name>.<kind>-XXXXXXXX`` (as ``_new_sibling`` names them) in
    ``parent``, sorted; ``name`` is a glob pattern. Symbolic links are never listed."""
    found = []
    for path in parent.glob(f".{name}.{kind}-*"):
        if (_SUFFIX.fullmatch(path.name.rsplit(f".{kind}-", 1)[1])
                and path.is_dir() and not path.is_symlink()):
            found.append(path)
    return sorted(found)


def remove_leftovers(parent: Path, name: str) -> None:
    """Removes what killed saves of ``parent/<name>`` left (``name`` a glob pattern): every
    ``.<name>.tmp-*`` (a partial new copy, never complete) and the ``.<name>.old-*`` of a
    ``<name>`` that exists (superseded: the old copy of a swap killed before its removal, or an
    empty placeholder). Call it only after a successful save: it assumes no other save of these
    paths is running."""
    for path in _siblings(parent, name, "tmp"):
        shutil.rmtree(path, ignore_errors=True)
    for path in _siblings(parent, name, "old"):
        final = path.with_name(path.name[1:].rsplit(".old-", 1)[0])
        if os.path.lexists(final):
            shutil.rmtree(path, ignore_errors=True)


def recover_dir(final: str | os.PathLike[str], is_complete: Callable[[Path], bool],
                what: str = "save", stacklevel: int = 3) -> None:
    """Puts back the old copy of ``final`` that a kill between the two renames of
    ``replace_dir`` left only under ``.<name>.old-*``.

    Does nothing if ``final`` exists or no such sibling is complete (``is_complete``). With
    exactly one complete sibling it is renamed back to ``final``, with a ``RuntimeWarning``.

    Raises:
      ValueError: several complete siblings (which one is wanted cannot be told): naming them;
      nothing is moved.
    """
    final = Path(os.path.realpath(final))
    if os.path.lexists(final):
        return
    copies = [p for p in _siblings(final.parent, glob.escape(final.name), "old")
              if is_complete(p)]
    if not copies:
        return
    if len(copies) > 1:
        raise ValueError(
            f"{final} does not exist, and {len(copies)} complete copies of it are in "
            f"{final.parent}: {', '.join(p.name for p in copies)} (left aside by saves killed "
            f"while swapping a new {what} in); rename the one to keep to {final.name} and "
            f"delete the others")
    os.rename(copies[0], final)
    warnings.warn(
        f"{final} was missing: a save there was killed while swapping the new {what} in, and "
        f"the complete previous {what} was left as {copies[0].name}; it was renamed back to "
        f"{final}", RuntimeWarning, stacklevel=stacklevel)
