"""The walk of an input folder, shared by every layout's reader (`plain.py`, `nnunet.py`, `bids.py`, a manifest's
DICOM folders): each entry of each folder is read, or accounted for with its reason, never silently passed over.

- A folder that cannot be listed (permission denied) is rejected: `unreadable folder: Permission denied`.
- A symbolic link to nothing, or a loop of links, is rejected: `unreadable: a symbolic link to nothing`.
- A link to a folder is followed when its target lies within the input root, and every folder is read once, at the
  first path the walk reaches it (sorted, depth first); another path to it is a note, so a link and its target
  both inside give no duplicates. A link to a folder outside the root is rejected, not followed: a folder received
  with a link to `/` or a home folder never pulls in what it does not hold.
- A link to a file is read as the file it points to, under the link's own path (a second link to one file is a
  duplicate, by content): a recorded path is relative to the root whatever a link points to, never its target.
- Pipes, sockets and devices are listed as ignored, never opened (opening a pipe waits for a writer forever).
- The output folder, when it lies inside the input, is not read: one note, not its files one by one.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

OUTSIDE = (
    "not read: a symbolic link to a folder outside the input folder (move or copy it in, or list its files in a "
    "manifest)"
)


def relative(path: str, root: str) -> str:
    """`path` as recorded in a shard set: relative to the input root; a path outside it (a manifest row
    pointing elsewhere) by its name only, so no absolute path (user names, site folders) is ever stored."""
    p = Path(path)
    try:
        return p.relative_to(root).as_posix() if root else p.name
    except ValueError:
        return p.name


def within(path: str, folder: str) -> bool:
    """Whether absolute `path` is `folder` or lies under it (both real paths: no link left to cross)."""
    return os.path.isabs(path) and os.path.commonpath([path, folder]) == folder


def _names(folder: Path, found) -> list[str] | None:
    try:
        with os.scandir(folder) as entries:
            return sorted(e.name for e in entries)
    except OSError as err:
        found.reject(str(folder), f"unreadable folder: {err.strerror or type(err).__name__}")
        return None


def readable(folder: Path, found) -> bool:
    """Whether `folder` can be listed; if not, it is rejected with the reason."""
    return _names(folder, found) is not None


def listing(folder: Path, found, bound: str | None = None) -> list[Path] | None:
    """The entries of `folder` to read, sorted, links vetted (see the module's docstring); None, with the folder
    rejected, when it cannot be listed. `bound`: the folder links may lead into (the input root by default)."""
    names = _names(folder, found)
    if names is None:
        return None
    kept = []
    for p in (folder / name for name in names):
        try:
            mode = os.stat(p).st_mode
        except OSError as err:  # a link to nothing, a loop of links (or a folder listed but not searchable)
            why = {errno.ELOOP: "a loop of symbolic links", errno.ENOENT: "a symbolic link to nothing"}
            found.reject(str(p), f"unreadable: {why.get(err.errno, err.strerror)}")
            continue
        if stat.S_ISREG(mode):
            kept.append(p)
        elif not stat.S_ISDIR(mode):
            found.ignored.append(str(p))  # a pipe, socket or device: never opened
        elif found.output and os.path.realpath(p) == found.output:
            note = f"{relative(str(p), found.root)}: the output folder, not read as input"
            if note not in found.notes:
                found.notes.append(note)
        elif p.is_symlink() and not within(os.path.realpath(p), bound or found.root):
            found.reject(str(p), OUTSIDE)
        else:
            kept.append(p)
    return kept


def enter(folder: Path, found) -> bool:
    """Whether to read `folder`: False, with a note, when the walk has read it already by another path."""
    first = found.walked.setdefault(os.path.realpath(folder), str(folder))
    if first == str(folder):
        return True
    shown = relative(first, found.root) if first != found.root else "the input folder itself"
    found.notes.append(f"{relative(str(folder), found.root)}: leads to a folder already read ({shown}), not read again")
    return False


def files_under(folder: Path, found, bound: str | None = None) -> list[Path]:
    """Every file under `folder` (which the caller has entered), in sorted order, each folder read once."""
    files = []
    for p in listing(folder, found, bound) or []:
        if p.is_dir():
            if enter(p, found):
                files += files_under(p, found, bound)
        else:
            files.append(p)
    return files
