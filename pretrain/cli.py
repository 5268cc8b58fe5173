"""The `voxfm` command: `voxfm <subcommand> key=value ...` (Hydra overrides). `python -m pretrain` too."""

from __future__ import annotations

import json
import sys

from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pretrain.config import CONF_DIR, load_config, missing_keys

USAGE = """usage: voxfm <command> [key=value ...]

commands:
  shard     input=<dir|manifest.csv> output=<dir>       raw NIfTI volumes -> WebDataset shards
  pretrain  experiment=<name> data.shards=<dir> run_dir=<dir>
                                                     train (reruns with the same run_dir resume)
  export    checkpoint=<ckpt|run_dir> output=<dir> [in_channels=N]
                                                     backbone.safetensors + backbone.json for MONAI
  bench     data shards=<dir>                          decode MB/s of shards vs nibabel .nii.gz

Every key of conf/<command>.yaml can be overridden; `voxfm <command> --cfg` prints the composed config.
experiments: {experiments}
"""


def _usage() -> str:
    experiments = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    return USAGE.format(experiments=", ".join(experiments))


def _compose(name: str, overrides: list[str]):
    show = "--cfg" in overrides
    overrides = [o for o in overrides if o != "--cfg"]
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"expected key=value overrides, got {bad}")
    cfg = load_config(name, overrides)
    if show:
        print(OmegaConf.to_yaml(cfg))
        return None
    missing = missing_keys(cfg)
    if missing:
        raise ValueError(f"voxfm {name}: missing required setting(s): " + ", ".join(f"{k}=..." for k in missing))
    return cfg


def _shard(cfg) -> None:
    from data.ingest import run_shard

    report = run_shard(cfg.input, cfg.output, OmegaConf.to_container(cfg.preprocess), cfg.shard_max_mb,
                       cfg.codec, cfg.progress)
    print(f"sharded {report['n_sharded']}/{report['n_inputs']} volumes ({report['n_skipped']} already done), "
          f"rejected {report['n_rejected']}; {report['n_shards']} shard(s) in {cfg.output}")
    for r in report["rejected"]:
        print(f"  rejected {r['path']}: {r['reason']}")


def _pretrain(cfg) -> None:
    from pretrain.train import run_pretrain

    run_pretrain(cfg)


def _export(cfg) -> None:
    from pretrain.export import run_export

    out = run_export(cfg.checkpoint, cfg.output, cfg.in_channels)
    print(f"exported {out / 'backbone.safetensors'} and {out / 'backbone.json'}")


def _bench(cfg) -> None:
    from pretrain.bench import bench_data, format_data_bench

    result = bench_data(cfg.shards, cfg.max_samples, cfg.repeats)
    print(json.dumps(result))
    print(format_data_bench(result))


COMMANDS = {"shard": _shard, "pretrain": _pretrain, "export": _export, "bench": _bench}
BENCHES = ("data",)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, overrides = argv[0], argv[1:]
    if command not in COMMANDS:
        print(f"voxfm: unknown command {command!r}; choose from {list(COMMANDS)}\n\n{_usage()}", file=sys.stderr)
        return 2
    if command == "bench":
        if not overrides or overrides[0] not in BENCHES:
            print(f"voxfm bench: say what to benchmark, one of {list(BENCHES)}: `voxfm bench data shards=<dir>`",
                  file=sys.stderr)
            return 2
        overrides = overrides[1:]
    try:
        cfg = _compose(command, overrides)
        if cfg is not None:
            COMMANDS[command](cfg)
    except (ValueError, HydraException, OmegaConfBaseException) as err:
        print(f"voxfm {command}: error: {err}", file=sys.stderr)
        return 2
    return 0
