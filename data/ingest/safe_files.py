"""Every file voxfm writes into a run_dir, a shard set or an export goes through here: created without following a
link, so a link planted in the folder (a run_dir or a shard set received as a tarball keeps its links) never makes
voxfm write somewhere else.

- A new file is written as `<name>.tmp` beside its target, created exclusively (`O_EXCL | O_NOFOLLOW`; a stale or
  planted `.tmp` is unlinked first: unlinking removes the link itself, not what it points to), then renamed over
  the target. A rename replaces a link at the target with the file; it never writes through it.
- A file appended to (events.jsonl) or opened in place (a lock) is opened with `O_NOFOLLOW`: a link there is
  refused with `LinkRefused`, naming it (exit 2); so is a hard link to it from elsewhere (more than one name).
- The folders voxfm writes into inside a run_dir, shard set or export (checkpoints/, metrics/, images/, an arm of
  a fine-tune, inspect/) are refused when they are links (`refuse_linked_folders`): a linked folder would take
  every file written into it elsewhere. The run_dir itself may be a link (a run on a bigger disk).
- A JSON file voxfm reads beside weights or a run (backbone.json, full.json, results.json) is read only up to
  `MAX_JSON_BYTES` (`read_small_text`): a sparse gigabyte file is refused before it is read.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

MAX_JSON_BYTES = 64 * 2**20
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
    """For a file another library opens by name (Lightning's metrics.csv): a link there (symbolic, or a second name
    of a file elsewhere) is refused up front."""
    path = Path(path)
    if path.is_symlink():
        refuse_link(path, OSError(errno.ELOOP, "a link"))
    if path.is_file() and path.stat().st_nlink > 1:
        raise LinkRefused(
            f"{path} has another name elsewhere (a hard link); voxfm writes its own files only: remove it"
        )


def refuse_linked_folders(root: str | Path, names) -> None:
    """Each `root/name` that voxfm writes into must not be a link (nor any folder between root and it)."""
    root = Path(root)
    for name in names:
        path = root
        for part in Path(name).parts:
            path = path / part
            if path.is_symlink():
                raise LinkRefused(
                    f"{path} is a symbolic link (to {os.readlink(path)}); voxfm writes into its own folders only, "
                    "never through a link: remove it"
                )


def read_small_text(path: str | Path, max_bytes: int = MAX_JSON_BYTES) -> str:
    """A small text file (JSON beside weights or a run); ValueError above `max_bytes`, before reading it."""
    size = Path(path).stat().st_size
    if size > max_bytes:
        raise ValueError(
            f"{path} is {size / 2**20:.0f} MiB; voxfm reads such a file only up to {max_bytes // 2**20} MiB"
        )
    return Path(path).read_text()


def open_no_follow(path: str | Path, flags: int, mode: int = 0o644) -> int:
    """`os.open` with `O_NOFOLLOW`: a link at `path` raises `LinkRefused`."""
    path = Path(path)
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0), mode)
    except OSError as err:
        refuse_link(path, err)
        raise
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1:
        os.close(fd)
        raise LinkRefused(f"{path} is not a plain file of its own (a hard link, a device or a pipe): remove it")
    return fd


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
