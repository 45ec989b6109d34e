"""The report directory, written as one generation: built whole beside its final place, then swapped in.

A kill at any moment leaves the previous complete report or the new one, never a
mix of the two (a ``summary.csv`` of one sweep state with the ``index.html`` of
another, a ``report.md`` linking images already deleted). A writer holds an
``flock`` on the folder it builds in; the next report removes the folders of
writers that are gone, and leaves alone one that another report is still building.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ..runlock import held

# renameat2(2), which Python does not wrap: swaps two paths in one step (Linux >= 3.15, glibc >= 2.28).
AT_FDCWD = -100
RENAME_EXCHANGE = 2


def _temp_beside(out: Path) -> Path:
    return out.with_name(f".{out.name}.{os.urandom(4).hex()}.tmp")


def _busy(folder: Path) -> bool:
    """Whether a live writer holds the folder."""
    return bool(held(folder))


def remove_leftovers(out: Path) -> list[Path]:
    """Folders that killed writers of ``out`` left beside it, removed; returns them."""
    gone = []
    for d in sorted(Path(out).parent.glob(f".{Path(out).name}.*.tmp")):
        if d.is_dir() and not _busy(d):
            shutil.rmtree(d, ignore_errors=True)
            gone.append(d)
    return gone


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` atomically; False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _swap_in(new: Path, out: Path) -> None:
    """``new`` becomes ``out``; the previous ``out``, if any, ends up at ``new``."""
    try:
        os.rename(new, out)  # no report there yet: one rename
        return
    except OSError as e:
        if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
            raise
    if not _exchange(new, out):  # without renameat2, a kill between these two leaves out/ hidden beside
        old = _temp_beside(out)
        os.rename(out, old)
        os.rename(new, out)
        os.rename(old, new)


def write_generation(out: Path, fill: Callable[[Path], None]) -> None:
    """Call ``fill(folder)`` on a new hidden folder beside ``out``, then swap it in for ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out)
    new = _temp_beside(out)
    new.mkdir()  # 0777 & ~umask: a report is read like any file the user makes (mkdtemp's would be private)
    fd = os.open(new, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # held until the swap is done: another report's cleanup skips it
        fill(new)
        _swap_in(new, out)
    finally:
        os.close(fd)
        shutil.rmtree(new, ignore_errors=True)  # the previous generation, or an unfinished new one
