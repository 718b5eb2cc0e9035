"""Replace a directory as a whole (run checkpoints, replay saves): write a sibling, swap it in."""

from __future__ import annotations

import os
import secrets
import shutil
from pathlib import Path
from typing import Callable


def _new_sibling(final: Path, kind: str) -> Path:
    """Creates an empty hidden directory ``.<name>.<kind>-XXXXXXXX`` next to ``final``."""
    while True:
        path = final.with_name(f".{final.name}.{kind}-{secrets.token_hex(4)}")
        try:
            path.mkdir()  # default mode (umask), unlike mkdtemp's 0700
            return path
        except FileExistsError:
            continue


def replace_dir(final: str | os.PathLike[str], write: Callable[[Path], None]) -> Path:
    """Writes a new directory ``final`` with ``write(tmp)`` and swaps it in as a whole.

    ``write`` fills an empty sibling ``.<name>.tmp-*``. Then an existing ``final`` is renamed
    aside (``.<name>.old-*``), the new one renamed in and the old one removed, so a crash at any
    instant leaves a complete old or new copy (between the two renames, under the ``.old-``
    name). On an error the partial copy is removed and ``final`` is left, or put back, as it was.

    Returns:
      The resolved path of ``final`` (symbolic links followed).
    """
    final = Path(os.path.realpath(final))
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _new_sibling(final, "tmp")
    try:
        write(tmp)
        if not os.path.lexists(final):
            os.rename(tmp, final)
            return final
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
    shutil.rmtree(aside, ignore_errors=True)
    return final
