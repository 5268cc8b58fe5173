"""One job per folder: an exclusive `fcntl.flock` on `<folder>/.voxfm.lock`, held for the job's lifetime.

The kernel releases a flock when its holder's last file descriptor closes, so a job that dies (even by SIGKILL)
leaves no stale lock: the next job simply takes it. Processes forked while the lock is held (data workers,
ingest workers) close their copy of the descriptor at once, so the lock lives exactly as long as its holder.
The file itself stays (removing it would let two jobs lock two different files: never delete it while its
holder's pid lives); while held, its content names the holder — host, pid, start time, command — for the
message a second job prints, and it is emptied on release, so a folder shared afterwards carries no host name or
command line. A folder where the lock cannot be created (read-only, full) is `FolderUnwritable` (exit 4).
"""

from __future__ import annotations

import errno
import fcntl
import functools
import inspect
import json
import os
import shlex
import socket
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from voxfm.data.ingest.safe_files import open_no_follow

LOCK_NAME = ".voxfm.lock"
UNSUPPORTED = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS)  # file systems without flock (some Lustre mounts)
_held: set[int] = set()  # descriptors of the locks this process holds


def _close_in_child() -> None:
    for fd in _held:
        with suppress(OSError):
            os.close(fd)  # the child's copy only: the parent's descriptor keeps the lock
    _held.clear()


os.register_at_fork(after_in_child=_close_in_child)


class FolderLocked(ValueError):
    """Another job holds the folder's lock (a ValueError: `voxfm` reports it as a bad invocation, exit 2)."""


class FolderUnwritable(OSError):
    """The folder or its lock file cannot be created or written (read-only file system, full disk, permissions)."""


def _holder(path: Path) -> str:
    """The lock file's content as words; it can be empty for an instant while a new holder writes it."""
    for _ in range(20):
        try:
            info = json.loads(path.read_text() or "null")
        except (OSError, ValueError):
            info = None
        if isinstance(info, dict):
            return (
                f"host {info.get('host')}, pid {info.get('pid')}, started {info.get('started')}, "
                f"command: {info.get('command')}; never delete the lock file while that process lives"
            )
        time.sleep(0.05)
    return "holder unknown (no readable lock content)"


@contextmanager
def folder_lock(folder: str | Path, what: str) -> Iterator[Path]:
    """Holds `<folder>/.voxfm.lock` (creating the folder) for the `with` block, or raises `FolderLocked` naming
    the holder. `what` names the folder in messages, e.g. "run_dir". Yields the lock file's path."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what}={folder}: exists and is not a folder")
    path = folder / LOCK_NAME
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd = open_no_follow(path, os.O_RDWR | os.O_CREAT)  # a lock that is a link: LinkRefused
    except OSError as err:
        raise FolderUnwritable(f"{what}={folder}: cannot create its lock {path} ({err.strerror or err})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise FolderLocked(
            f"{what}={folder} is in use by another voxfm job ({_holder(path)}); wait for it to end "
            f"or use another folder (the lock, {path}, is released when that process ends)"
        ) from None
    except OSError as err:
        os.close(fd)
        if err.errno not in UNSUPPORTED:
            raise
        print(
            f"voxfm: warning: {folder}'s file system does not support locks ({err}); two jobs on this "
            "folder will not be stopped",
            file=sys.stderr,
            flush=True,
        )
        yield path
        return
    _held.add(fd)
    try:
        info = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "command": shlex.join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        }
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        except OSError as err:
            raise FolderUnwritable(f"{what}={folder}: cannot write its lock {path} ({err.strerror or err})") from None
        yield path
    finally:
        _held.discard(fd)
        with suppress(OSError):
            os.ftruncate(fd, 0)  # no host name or command line left behind in a folder that travels
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def locks_folder(argument: str, what: str) -> Callable:
    """Decorator: the function runs holding the lock of the folder passed as its `argument`."""

    def wrap(fn: Callable) -> Callable:
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            with folder_lock(signature.bind(*args, **kwargs).arguments[argument], what):
                return fn(*args, **kwargs)

        return locked

    return wrap
