"""Every file voxfm writes into a run_dir, a shard set or an export goes through here: created without following a
link, so a link planted in the folder (a run_dir or a shard set received as a tarball keeps its links) never makes
voxfm write somewhere else.

- A new file is written as `<name>.tmp` beside its target, created exclusively (`O_EXCL | O_NOFOLLOW`; a stale or
  planted `.tmp` is unlinked first: unlinking removes the link itself, not what it points to), then renamed over
  the target. A rename replaces a link at the target with the file; it never writes through it.
- A file appended to (events.jsonl) or opened in place (a lock) is opened with `O_NOFOLLOW`: a link there is
  refused with `LinkRefused`, naming it (exit 2).
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

NEW = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class LinkRefused(ValueError):
    """A file voxfm writes in place is a symbolic link (a ValueError: reported as a bad invocation, exit 2)."""


def refuse_link(path: Path, err: OSError) -> None:
    if err.errno == errno.ELOOP or path.is_symlink():
        raise LinkRefused(
            f"{path} is a symbolic link (to {os.readlink(path)}); voxfm writes its own files only, never through "
            "a link: remove it"
        ) from None


def refuse_a_link(path: str | Path) -> None:
    """For a file another library opens by name (Lightning's metrics.csv): a link there is refused up front."""
    if Path(path).is_symlink():
        refuse_link(Path(path), OSError(errno.ELOOP, "a link"))


def open_no_follow(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """`os.open` with `O_NOFOLLOW`: a link at `path` raises `LinkRefused`."""
    path = Path(path)
    try:
        return os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as err:
        refuse_link(path, err)
        raise


def new_temp(path: str | Path) -> tuple[Path, int]:
    """(`<path>.tmp`, its descriptor): created exclusively beside `path`, never through a link."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    with suppress(FileNotFoundError):
        tmp.unlink()  # a stale temp file of a killed job, or a planted link: the link goes, its target stays
    return tmp, os.open(tmp, NEW, 0o644)


@contextmanager
def replacing(path: str | Path, mode: str = "w") -> Iterator:
    """`with replacing(p) as f: f.write(...)`: the content lands at `p` whole (a rename) or not at all."""
    path = Path(path)
    tmp, fd = new_temp(path)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            tmp.unlink()
        raise


def write_text_atomic(path: str | Path, text: str) -> None:
    with replacing(path) as f:
        f.write(text)


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with replacing(path, "wb") as f:
        f.write(data)


def append_line(path: str | Path, line: str) -> None:
    """One line appended to `path` (created if absent), never through a link."""
    fd = open_no_follow(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    with os.fdopen(fd, "a") as f:
        f.write(line.rstrip("\n") + "\n")
