"""`voxfm <command> -m key=a,b other=x,y`: one job per combination of the swept values, run one after another in
this process (Hydra's basic launcher does the same), each in its own run_dir (or output) named after its swept
values: `run_dir=runs/lr` with `optim.optimizer.lr=1e-3,3e-4` gives runs/lr/optim.optimizer.lr-0.001 and ...-0.0003
(several swept keys: `a-1__b-2`).
Rerunning the sweep resumes every job. `hydra/launcher=submitit_local|submitit_slurm` runs the jobs elsewhere
(`pretrain/cli/launchers.py`)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser

from voxfm.pretrain.errors import ConfigError

FLAGS = ("-m", "--multirun")
OUTPUT_KEYS = ("run_dir", "output")  # the key each job's own folder goes under


def is_sweep(overrides: list[str]) -> bool:
    return any(o in FLAGS for o in overrides)


def jobs(overrides: list[str]) -> list[list[str]]:
    """Each job's overrides: the cartesian product of the swept values, its folder key extended by them."""
    overrides = [o for o in overrides if o not in FLAGS]
    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as err:
        raise ConfigError(f"-m: {str(err).splitlines()[0]}") from None
    axes, swept = [], []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
            swept.append(len(axes) - 1)
        else:
            axes.append([o.input_line])
    if not swept:
        raise ConfigError("-m: no swept key; give at least one as key=a,b (or key=range(1,4))")
    base = {o.get_key_element(): o.value() for o in parsed if o.get_key_element() in OUTPUT_KEYS}
    if not base:
        raise ConfigError(f"-m: each job needs its own folder: give {' or '.join(OUTPUT_KEYS)}=<folder> for the sweep")
    out = []
    for combination in itertools.product(*axes):
        # key-value pairs as `key-value` joined by `__`: no `=` or `,`, which would need quoting on every later
        # command line that names the folder (voxfm export checkpoint=..., voxfm plot run_dir=...)
        name = "__".join(re.sub(r"[^\w.+-]", "_", combination[i].replace("=", "-", 1)) for i in swept)
        job = [o for o in combination if o.split("=", 1)[0] not in base]
        out.append(job + [f"{key}={folder}/{name}" for key, folder in base.items()])
    return out


def sweep_folder(todo: list[list[str]]) -> Path:
    """The folder the sweep's jobs share (their run_dir's or output's parent): submitit's logs go under it."""
    last = todo[0][-1]
    return Path(last.split("=", 1)[1]).parent
