"""`voxfm <command> --info`, as Hydra's `--info`: where the command's config comes from. The config folder, each
config group's chosen option and the file it reads, the command-line overrides, and the sweep launchers Hydra
has installed (`hydra/launcher=...`)."""

from __future__ import annotations

from voxfm.pretrain.cli.compose import CONF_DIR, command_overrides, explain
from voxfm.pretrain.errors import ConfigError

FLAG = "--info"


def wants_info(overrides: list[str]) -> bool:
    return FLAG in overrides


def command_info(command: str, overrides: list[str]) -> str:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    from voxfm.pretrain.config.renamed import renamed_override

    given = [renamed_override(o) for o in command_overrides(command, [o for o in overrides if o != FLAG])]
    try:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            cfg = compose(config_name=command, overrides=given, return_hydra_config=True)
            launchers = GlobalHydra.instance().config_loader().get_group_options("hydra/launcher")
    except HydraException as err:
        raise ConfigError(explain(err, command, given)) from None
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra/") and v is not None}
    lines = [f"# voxfm {command}: where its config comes from", f"config folder: {CONF_DIR}"]
    lines.append(f"main file: {CONF_DIR / (command + '.yaml')}")
    lines.append("config groups (group=option: file):")
    lines += [f"  {g}={o}: {CONF_DIR / g / (o + '.yaml')}" for g, o in sorted(choices.items())] or ["  (none)"]
    lines.append("overrides: " + (" ".join(given) if given else "(none)"))
    if not command.startswith("bench/"):  # benches are not swept
        lines.append(
            f"sweep launchers installed (voxfm {command} -m hydra/launcher=<name> ...): {', '.join(launchers)}"
        )
    return "\n".join(lines)
