"""Where a sweep's jobs run, chosen as Hydra spells it: `hydra/launcher=basic` (the default: one after another in
this process), `submitit_local` (each job its own process on this machine) or `submitit_slurm` (one SLURM job each,
as a job array), with `hydra.launcher.<key>=<value>` settings named as hydra-submitit-launcher names them
(timeout_min, nodes, tasks_per_node, gpus_per_node, cpus_per_task, mem_gb, partition, qos, account, constraint,
array_parallelism, submitit_folder). The submitit launchers need `submitit` (`pip install submitit`, or the
`slurm` extra); voxfm's own preemption handling (SIGUSR1 → checkpoint, requeue) runs inside each job."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from voxfm.pretrain.errors import ConfigError

LAUNCHERS = ("basic", "submitit_local", "submitit_slurm")
GENERIC = ("timeout_min", "nodes", "tasks_per_node", "gpus_per_node", "cpus_per_task", "mem_gb", "name")
SLURM_ONLY = ("partition", "qos", "account", "constraint", "comment", "exclude", "array_parallelism")


def split_launcher(overrides: list[str]) -> tuple[list[str], str, dict[str, str]]:
    """(the other overrides, the launcher, its settings) from `hydra/launcher=...` and `hydra.launcher.k=v`."""
    rest, launcher, settings = [], "basic", {}
    for o in overrides:
        key, _, value = o.partition("=")
        if key == "hydra/launcher":
            if value not in LAUNCHERS:
                raise ConfigError(f"hydra/launcher={value}: allowed: {', '.join(LAUNCHERS)}")
            launcher = value
        elif key.startswith("hydra.launcher."):
            name = key.removeprefix("hydra.launcher.")
            if name not in (*GENERIC, *SLURM_ONLY, "submitit_folder"):
                raise ConfigError(f"{key}: unknown; known: {', '.join((*GENERIC, *SLURM_ONLY, 'submitit_folder'))}")
            settings[name] = value
        else:
            rest.append(o)
    if settings and launcher == "basic":
        raise ConfigError("hydra.launcher.* settings need hydra/launcher=submitit_local or submitit_slurm")
    return rest, launcher, settings


def _number(value: str):
    try:
        return int(value)
    except ValueError:
        try:
            return float(value)
        except ValueError:
            return value


def run_submitit(job: Callable, command: str, todo: list[list[str]], launcher: str, settings: dict, folder: Path):
    """Submit every job through submitit and wait for them; returns their exit codes in order."""
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"hydra/launcher={launcher} needs submitit: pip install submitit") from None
    executor = submitit.AutoExecutor(
        folder=settings.pop("submitit_folder", None) or folder / ".submitit",
        cluster="local" if launcher == "submitit_local" else "slurm",
    )
    params = {k: _number(v) for k, v in settings.items() if k in GENERIC}
    if launcher == "submitit_slurm":
        params |= {f"slurm_{k}": _number(v) for k, v in settings.items() if k in SLURM_ONLY}
    executor.update_parameters(**params)
    submitted = executor.map_array(job, [command] * len(todo), todo)
    for i, s in enumerate(submitted, start=1):
        print(f"voxfm: sweep job {i}/{len(todo)} submitted ({launcher}, id {s.job_id}): {' '.join(todo[i - 1])}")
    return [s.result() for s in submitted]
