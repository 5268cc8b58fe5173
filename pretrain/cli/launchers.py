"""Where a sweep's jobs run: through Hydra's own launcher plugins, chosen as Hydra spells it. `hydra/launcher=basic`
(the default: one after another in this process), or any launcher plugin that is installed, such as
hydra-submitit-launcher's `submitit_local` (each job its own process on this machine) and `submitit_slurm` (a SLURM
job array), with their settings as `hydra.launcher.<key>=<value>` (Hydra refuses an unknown one and lists the
known). voxfm's own preemption handling (SIGUSR1 → checkpoint, requeue) runs inside each job.

voxfm makes the jobs (`sweep.jobs`: its folder naming) and hands them to the launcher; each job recomposes and
checks its config as a single run does. Hydra writes nothing of its own: no `.hydra/` folder, no log file, no
working-directory change; the launcher's job folder is the job's run_dir (or output)."""

from __future__ import annotations

import functools
import traceback
from pathlib import Path

from voxfm.pretrain.cli.sweep import OUTPUT_KEYS, sweep_folder
from voxfm.pretrain.errors import ConfigError

QUIET = ("hydra.output_subdir=null", "hydra/job_logging=none", "hydra/hydra_logging=none")


def split_launcher(overrides: list[str]) -> tuple[list[str], list[str]]:
    """(the job overrides, Hydra's own: `hydra/launcher=...`, `hydra.launcher.k=v` and any other `hydra.` key)."""
    hydra = [o for o in overrides if o.startswith(("hydra/", "hydra.", "+hydra.", "~hydra"))]
    return [o for o in overrides if o not in hydra], hydra


def launcher_name(hydra_overrides: list[str]) -> str:
    chosen = [o.split("=", 1)[1] for o in hydra_overrides if o.startswith("hydra/launcher=")]
    return chosen[-1] if chosen else "basic"


def _job(command: str, run, cfg) -> int:
    """A job as the launcher runs it (here or in another process): the job's overrides through voxfm's own path."""
    from hydra.core.hydra_config import HydraConfig

    return run(command, list(HydraConfig.get().overrides.task))


def launch(command: str, run, todo: list[list[str]], hydra_overrides: list[str]) -> list:
    """Every job through the chosen launcher plugin; returns each job's exit code, or the exception that ended it."""
    from hydra import initialize_config_dir
    from hydra._internal.callbacks import Callbacks
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.plugins import Plugins
    from hydra.core.utils import JobStatus
    from hydra.errors import HydraException
    from hydra.types import HydraContext, RunMode
    from omegaconf.errors import OmegaConfBaseException

    from voxfm.pretrain.cli.compose import CONF_DIR, command_overrides
    from voxfm.pretrain.config.renamed import renamed_override

    sweep_dir = sweep_folder(todo).resolve()
    settings = [*hydra_overrides, *QUIET, f"hydra.sweep.dir={sweep_dir}"]
    # each job's Hydra folder is its own run_dir (or output): absolute, so joining it to the sweep folder keeps it
    todo = [[renamed_override(o) for o in command_overrides(command, job)] for job in todo]  # as Hydra reads them
    per_job = [[*job, f"hydra.sweep.subdir={_folder(job)}"] for job in todo]
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        try:
            master = loader.load_configuration(command, overrides=settings + todo[0], run_mode=RunMode.MULTIRUN)
            launcher = Plugins.instance().instantiate_launcher(
                hydra_context=HydraContext(config_loader=loader, callbacks=Callbacks(master)),
                task_function=functools.partial(_job, command, run),
                config=master,
            )
        except (HydraException, OmegaConfBaseException, ImportError) as err:
            raise ConfigError(f"{launcher_name(hydra_overrides)} launcher: {str(err).splitlines()[0]}") from None
    returns = launcher.launch(per_job, initial_job_idx=0)  # outside: each job composes its own config with Hydra
    out = []
    for r in returns:
        if r.status == JobStatus.COMPLETED:
            out.append(r.return_value)
        else:  # a crash inside the job: its traceback, as a single run would print it
            err = r._return_value
            print("".join(traceback.format_exception(err)).rstrip())
            out.append(err)
    return out


def _folder(job: list[str]) -> str:
    """The job's own folder, absolute (sweep.jobs always gives one)."""
    return str(Path(next(o for o in reversed(job) if o.split("=", 1)[0] in OUTPUT_KEYS).split("=", 1)[1]).resolve())
