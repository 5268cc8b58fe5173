"""An export lands whole or not at all, and one at a time.

The output folder is locked (`.voxfm.lock`, as a run_dir is) for the whole export. Its files are written into a
fresh folder beside it, `.<name>.voxfm-new`, which is then swapped in: the previous content moves to
`.<name>.voxfm-old` and is removed. A kill mid-export leaves the previous export untouched (the next export removes
the half-written folder). The folder then holds exactly one export: a `full` export followed by a `monai` one
leaves the `monai` files only.

A non-empty output that is not an export of the same run (its `backbone.json` or `full.json` names another
`source_run`, or it holds other files) is refused unless `overwrite=true`. `source_run` is a digest of the run's
folder, never the path itself: exports are made to be shared.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from voxfm.data.ingest.locks import LOCK_NAME, folder_lock
from voxfm.pretrain.errors import ConfigError, OutputWriteError

METADATA = ("backbone.json", "full.json")
EXPORT_FILES = {  # every name an export of any format writes
    LOCK_NAME, "README.md", "backbone.json", "backbone.safetensors", "full.json", "model.safetensors",
    "nnunet_pretrained.pth", "nnunet_plans_fragment.json", "checkpoint_final.pth", "adaptation_plan.json",
}  # fmt: skip
RENAME_EXCHANGE = 2  # renameat2's flag: two paths swap places in one step


def source_run(checkpoint: Path) -> str:
    """A digest naming the run a checkpoint belongs to (its run_dir: the folder above `checkpoints/`)."""
    path = Path(checkpoint).resolve()
    run = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    return hashlib.sha256(str(run).encode()).hexdigest()[:16]


def _recorded_run(folder: Path) -> str | None:
    for name in METADATA:
        with suppress(OSError, ValueError, AttributeError):
            meta = json.loads((folder / name).read_text())
            return meta.get("source_run") if isinstance(meta, dict) else None
    return None


def check_replaceable(out: Path, run: str, overwrite: bool) -> None:
    """Refuses (exit 2, nothing written) to replace a non-empty output that is not an export of the same run."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ConfigError(f"output={out}: exists and is not a folder (a link or a file): choose another output")
    present = sorted(p.name for p in out.iterdir() if p.name != LOCK_NAME) if out.is_dir() else []
    if not present or overwrite:
        return
    recorded, foreign = _recorded_run(out), [name for name in present if name not in EXPORT_FILES]
    if recorded == run and not foreign:
        return
    what = f"other files ({', '.join(foreign[:4])})" if foreign else "an export of another run (or an unreadable one)"
    raise ConfigError(
        f"output={out} holds {what}; nothing was written: choose another output, or overwrite=true to replace "
        "everything in it"
    )


@contextmanager
def swapped_in(output: str | Path, run: str, overwrite: bool) -> Iterator[Path]:
    """`with swapped_in(out, run, overwrite) as new: <write the export into new>`: on a normal exit `new` becomes
    `out`, whole; on an exception `out` is left as it was."""
    out = Path(output)
    new, old = out.with_name(f".{out.name}.voxfm-new"), out.with_name(f".{out.name}.voxfm-old")
    if not out.exists() and not out.is_symlink() and old.is_dir() and not old.is_symlink():
        os.rename(old, out)  # an export killed between its two renames: the previous export comes back
    check_replaceable(out, run, overwrite)  # before the lock creates the folder
    try:
        with folder_lock(out, "output"):
            check_replaceable(out, run, overwrite)  # again, under the lock: another export may have finished
            for stale in (new, old):  # a killed export's leftovers (their lock is ours: we hold out's)
                if stale.is_symlink() or stale.is_file():
                    stale.unlink()
                elif stale.exists():
                    shutil.rmtree(stale)
            with folder_lock(new, "output"):
                try:
                    yield new
                except BaseException:
                    shutil.rmtree(new, ignore_errors=True)
                    raise
                _publish(new)
                if not _exchange(new, out):  # no renameat2 here: two renames (a kill between them is undone above)
                    os.rename(out, old)
                    os.rename(new, out)
                    new = old
            shutil.rmtree(new, ignore_errors=True)  # the previous export, swapped out
    except OSError as err:
        if isinstance(err, OutputWriteError):
            raise
        raise OutputWriteError(
            f"cannot write the export to {out} ({type(err).__name__}: {err}); the previous content of "
            f"{out} is unchanged: free space or fix permissions, then rerun"
        ) from err


def _exchange(a: Path, b: Path) -> bool:
    """`a` and `b` swap places in one step (Linux renameat2 RENAME_EXCHANGE): `b` is never absent. False where the
    C library or file system cannot."""
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd = -100
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP if hasattr(errno, "ENOTSUP") else errno.EINVAL):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _publish(folder: Path) -> None:
    """Every file of the export readable as the user's other files are (some writers create theirs 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    for p in folder.iterdir():
        if p.is_file() and not p.is_symlink():
            os.chmod(p, 0o666 & ~umask)
