"""One writer per run directory: its lock, who holds it, and whether that writer still lives.

The process that trains a run holds an exclusive ``flock`` on ``<run>/.lock`` for
the whole job (:class:`RunLock`, taken by :func:`ablate.rundir.claim` before
anything in the run is modified). A second launcher meeting it skips the run.
The kernel drops the lock when its process dies, however it dies, so a stale
lock never blocks, and a reader tells a live run from an interrupted one by
probing it (:func:`shown_status`); on another host, by the run's heartbeat.
"""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import socket
import time
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

LOCK = ".lock"  # flock'ed by the run's one writer; holds "pid host" of the last holder

class RunLocked(RuntimeError):
    """Another live process holds the run directory; the message is one line naming it and that process."""


# A report's liveness probe (:func:`lock_held`) holds the lock for microseconds; a run holds it for its
# whole life. Retrying this long tells the two apart.
LOCK_PATIENCE_S = 0.5
LOCK_RETRY_S = 0.05


class RunLock:
    """The exclusive ``flock`` on ``run_dir/.lock``, taken before anything in the run is modified and
    held until :meth:`release` or the process ends (the kernel drops it then: no stale lock blocks).

    The lock file itself is never deleted: unlinking a lock file lets two processes lock two inodes."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        deadline = time.monotonic() + LOCK_PATIENCE_S
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() < deadline:
                    time.sleep(LOCK_RETRY_S)
                    continue
                pid, host, *_ = os.pread(fd, 200, 0).decode(errors="replace").split() + ["?", "?"]
                os.close(fd)
                raise RunLocked(f"{Path(run_dir).name}: running in another process, pid {pid} on {host}; "
                                "skipping") from None
            except OSError as e:  # e.g. Lustre mounted without -o flock: ENOSYS
                if e.errno not in (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP):
                    raise
                logging.getLogger("ablate").warning("%s: this filesystem has no flock (%s); nothing stops a "
                                                    "second launcher writing this run", run_dir, e.strerror)
                break
        me = f"{os.getpid()} {socket.gethostname()}\n".encode()
        try:
            os.pwrite(fd, me, 0)
            os.ftruncate(fd, len(me))
        except OSError:  # a full disk: the lock holds all the same, only the note of its owner is missing
            pass
        self.fd: int | None = fd

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)  # closing the descriptor drops the flock
            self.fd = None

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def lock_held(run_dir: Path) -> bool | None:
    """Whether a live process holds the run's lock; None when it cannot be told (no lock file, or a
    filesystem without ``flock``)."""
    return held(Path(run_dir) / LOCK)


def held(path: Path) -> bool | None:
    """Whether a live process holds an exclusive ``flock`` on ``path`` (a file or a folder); None when it
    cannot be told. Probed with a shared lock, released at once."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    except OSError:
        return None
    finally:
        os.close(fd)


def now() -> str:
    """A heartbeat: the current time, ISO 8601 in UTC."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def owner() -> dict[str, Any]:
    """Who writes a run, for ``summary.json``: pid and host (the heartbeat is added per epoch)."""
    return {"pid": os.getpid(), "host": socket.gethostname(), "heartbeat": now()}


# A run on another host, whose lock cannot be probed from here, counts as alive while its last heartbeat
# (one per finished epoch) is younger than this many of its own mean epochs, and at least the floor
# (before its first epoch there is no epoch time to go by).
HEARTBEAT_EPOCHS = 3.0
HEARTBEAT_FLOOR_S = 600.0


def is_alive(run_dir: Path, summary: Mapping[str, Any]) -> bool:
    """Whether the process writing a ``running`` run still runs.

    On this host its lock says so (a dead process holds no flock); for a run written
    before locks existed, its pid. On another host: its heartbeat is recent."""
    host, pid = summary.get("host"), summary.get("pid")
    if host in (None, socket.gethostname()):
        held = lock_held(run_dir)
        if held is not None:
            return held
        return isinstance(pid, int) and _pid_alive(pid)
    try:
        beat = datetime.fromisoformat(str(summary.get("heartbeat"))).timestamp()
        done, seconds = int(summary.get("epochs_done") or 0), float(summary.get("seconds") or 0.0)
    except (TypeError, ValueError):
        return False
    grace = max(HEARTBEAT_EPOCHS * seconds / done if done else 0.0, HEARTBEAT_FLOOR_S)
    return time.time() - beat < grace


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def shown_status(run_dir: Path, summary: Mapping[str, Any] | None) -> str | None:
    """A run's status as a reader should show it: ``running`` only while its writer lives, else
    ``interrupted`` (killed, or its machine lost); other statuses as recorded."""
    status = summary.get("status") if summary else None
    if status == "running" and not is_alive(run_dir, summary):
        return "interrupted"
    return status if isinstance(status, str) else None


