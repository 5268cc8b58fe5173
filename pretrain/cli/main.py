"""The `voxfm` command: `voxfm <subcommand> key=value ...` (Hydra overrides). `python -m pretrain` too."""

from __future__ import annotations

import difflib
import json
import re
import sys

from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from pretrain.cli.compose import CONF_DIR, load_config, missing_keys
from pretrain.errors import PREEMPTED_EXIT_CODE, CheckpointWriteError, OutputWriteError, Preempted

USAGE = """usage: voxfm <command> [key=value ...]

commands:
  shard     input=<dir|manifest.csv> output=<dir> [workers=N]
                                                     NIfTI volumes, DICOM series -> WebDataset shards
  inspect   shards=<dir> [output=<dir>]                counts, spacing/shape distributions, rejections, a montage PNG
  pretrain  experiment=<name> data.shards=<dir> run_dir=<dir>
                                                     train (reruns with the same run_dir resume)
  finetune  experiment=<name> backbone=<export|none> data.shards=<dir> run_dir=<dir> [compare_scratch=true]
                                                     segmentation fine-tune, Dice per class on held-out volumes
  export    checkpoint=<ckpt|run_dir> output=<dir> [format=monai|nnunet|full] [in_channels=N]
                                                     backbone.safetensors + backbone.json for MONAI
  bench     data shards=<dir> [experiment=<name>]      decode MB/s of shards vs nibabel, regions/s per worker
  bench     model experiment=<name> [steps=N]          voxfm's training step, eager and compiled, vs MONAI's
  bench     attention [scale=F]                        SDPA forward + backward per backend at the ViT shapes
  bench     ingest input=<dir|manifest.csv>            voxfm shard's per-volume work vs MONAI's load/orient/resample

Every key of conf/<command>.yaml can be overridden; `voxfm <command> --cfg` prints the composed config.
experiments: {experiments}
"""


def _usage() -> str:
    experiments = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    experiments += sorted(p.stem for p in (CONF_DIR / "finetune_experiment").glob("*.yaml"))
    return USAGE.format(experiments=", ".join(experiments))


def _compose(name: str, overrides: list[str]):
    show = "--cfg" in overrides
    overrides = [o for o in overrides if o != "--cfg"]
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise ValueError(f"expected key=value overrides, got {bad}")
    try:
        cfg = load_config(name, overrides)
    except HydraException as err:
        raise ValueError(_explain(err, name, overrides)) from None
    if show:
        print(OmegaConf.to_yaml(cfg))
        return None
    missing = missing_keys(cfg)
    if missing:
        raise ValueError(f"voxfm {name}: missing required setting(s): " + ", ".join(f"{k}=..." for k in missing))
    return cfg


def _explain(err: HydraException, name: str, overrides: list[str]) -> str:
    """Hydra's message without its search-path dump, plus "did you mean" for a key that does not exist."""
    text = str(err).split("\nConfig search path:")[0].strip()
    match = re.search(r"Could not override '([\w.]+)'", text)
    if match is None:
        return text
    key = match.group(1)
    parent, _, leaf = key.rpartition(".")
    try:
        node = OmegaConf.select(load_config(name, [o for o in overrides if not o.startswith(key + "=")]), parent or "")
    except HydraException:
        return text
    if not isinstance(node, DictConfig):
        return text
    close = difflib.get_close_matches(leaf, [str(k) for k in node.keys()], n=1)
    hint = f"; did you mean {parent + '.' if parent else ''}{close[0]}?" if close else ""
    return f"{key}: unknown key{hint} (to add a new key on purpose: +{key}=...)"


def _shard(cfg) -> None:
    from data.ingest import WorkerDied, run_shard

    try:
        report = run_shard(cfg.input, cfg.output, OmegaConf.to_container(cfg.preprocess), cfg.shard_max_mb,
                           cfg.codec, cfg.progress, cfg.workers)
    except WorkerDied as err:
        print(f"voxfm shard: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:  # inputs' errors are rejections (or a ValueError naming input=): this is the output
        raise OutputWriteError(f"could not write output={cfg.output}: {err}; the shards published so far are "
                               "kept: free space (or fix permissions) and rerun the same command") from None
    print(f"sharded {report['n_sharded']}/{report['n_inputs']} inputs ({report['n_skipped']} already done), "
          f"rejected {report['n_rejected']}, ignored {report['n_ignored']} other file(s); {report['n_shards']} "
          f"shard(s) in {cfg.output} ({report['seconds']} s, {report['workers']} worker(s))")
    for r in report["rejected"]:
        print(f"  rejected {r['path']}: {r['reason']}")
    if report["n_ignored"]:
        print(f"  ignored (not an image voxfm reads): {report['n_ignored']}, listed in {cfg.output}/report.json")


def _pretrain(cfg) -> None:
    from pretrain.config.schema import validate_pretrain

    validate_pretrain(OmegaConf.to_container(cfg, resolve=True))  # before torch, Lightning, data or model load
    from pretrain.training.run import run_pretrain

    run_pretrain(cfg)


def _export(cfg) -> None:
    from pretrain.export.run import run_export

    out = run_export(cfg.checkpoint, cfg.output, cfg.in_channels, cfg.format)
    print(f"exported ({cfg.format}) to {out}: " + ", ".join(sorted(p.name for p in out.iterdir())))


def _finetune(cfg) -> None:
    from pretrain.finetune.run import results_table, run_finetune

    results = run_finetune(cfg)
    print(results_table(results))
    print(f"wrote {cfg.run_dir}/results.json and results.md")


def _inspect(cfg) -> None:
    from data.inspect import format_summary, inspect_shards

    summary = inspect_shards(cfg.shards, cfg.output, cfg.n_samples, cfg.seed)
    print(format_summary(summary))
    print(f"wrote {summary['montage']} and summary.json beside it")


def _experiment(overrides: list[str]) -> tuple[str | None, list[str]]:
    """(the last `experiment=` value or None, the other overrides)."""
    named = [o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")]
    return (named[-1] if named else None), [o for o in overrides if not o.startswith("experiment=")]


def _bench_ingest(overrides: list[str]) -> None:
    from pretrain.bench.ingest import bench_ingest, format_ingest_bench

    cfg = _compose("bench/ingest", overrides)
    if cfg is None:
        return
    result = bench_ingest(cfg.input, cfg.max_volumes, cfg.repeats, list(cfg.spacing))
    print(json.dumps(result))
    print(format_ingest_bench(result))


def _bench_data(overrides: list[str]) -> None:
    """`experiment=<name>` (optional) takes the region size and regions per volume from that experiment; the other
    overrides go to conf/bench/data.yaml."""
    from pretrain.bench.data import bench_data, format_data_bench

    experiment, overrides = _experiment(overrides)
    cfg = _compose("bench/data", overrides)
    if cfg is None:
        return
    region_size, per_volume = list(cfg.region_size), cfg.regions_per_volume
    if experiment:  # the regions that experiment's workers cut
        from hydra.utils import instantiate

        exp = load_config("pretrain", [f"experiment={experiment}", f"data.shards={cfg.shards}", "run_dir=unused"])
        region_size = list(exp.data.region_size or instantiate(exp.objective.stage).region_size_needed())
        per_volume = exp.data.regions_per_volume
    result = bench_data(cfg.shards, cfg.max_samples, cfg.repeats, region_size, per_volume)
    print(json.dumps({"experiment": experiment, **result}))
    print(format_data_bench(result))


BENCH_MODEL_KEYS = ("warmup", "steps", "profile", "compile")


def _bench_model(overrides: list[str]) -> None:
    """`warmup`/`steps` go to conf/bench/model.yaml; `experiment=` and every other override shape the
    experiment's pretrain config."""
    from pretrain.bench.model import bench_model, format_model_bench

    experiment, _ = _experiment(overrides)
    if experiment is None:
        raise ValueError("voxfm bench model: missing required setting(s): experiment=... (e.g. experiment=demo)")
    own = [o for o in overrides if o.split("=", 1)[0] in BENCH_MODEL_KEYS]
    cfg = _compose("bench/model", own)
    if cfg is None:
        return
    rest = [o for o in overrides if o.split("=", 1)[0] not in BENCH_MODEL_KEYS]
    pretrain = load_config("pretrain", ["data.shards=unused", "run_dir=unused", *rest])
    result = bench_model(pretrain, cfg.warmup, cfg.steps, cfg.profile, cfg.compile)
    table = result.pop("profile", None)
    print(json.dumps({"experiment": experiment, **result}))
    print(format_model_bench(result, experiment))
    if table:
        print(table)


def _bench_attention(overrides: list[str]) -> None:
    from pretrain.bench.attention import bench_attention, format_attention_bench

    cfg = _compose("bench/attention", overrides)
    if cfg is None:
        return
    result = bench_attention(dict(cfg.shapes), cfg.warmup, cfg.steps, cfg.scale, cfg.backends)
    print(json.dumps(result))
    print(format_attention_bench(result))


# documented in README.md ("Exit codes"); 75 = preempted (pretrain/errors.py)
EXIT_CODES = {"bad configuration": 2, "diverged": 3, "checkpoint not written": 4, "output not written": 4}
COMMANDS = {"shard": _shard, "pretrain": _pretrain, "export": _export, "bench": None, "inspect": _inspect,
            "finetune": _finetune}  # bench: one of BENCHES, each composing its own config
BENCHES = {"data": _bench_data, "model": _bench_model, "ingest": _bench_ingest, "attention": _bench_attention}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    command, overrides = argv[0], argv[1:]
    what = None
    if command not in COMMANDS:
        print(f"voxfm: unknown command {command!r}; choose from {list(COMMANDS)}\n\n{_usage()}", file=sys.stderr)
        return 2
    if command == "bench":
        if not overrides or overrides[0] not in BENCHES:
            print(f"voxfm bench: say what to benchmark, one of {list(BENCHES)}: `voxfm bench data shards=<dir>`, "
                  "`voxfm bench model experiment=<name>`, `voxfm bench ingest input=<dir>` or "
                  "`voxfm bench attention`", file=sys.stderr)
            return 2
        what, overrides = overrides[0], overrides[1:]
    try:
        if command == "bench":
            BENCHES[what](overrides)
            return 0
        if command == "finetune":  # its experiments live in conf/finetune_experiment/
            overrides = [f"finetune_{o}" if o.startswith("experiment=") else o for o in overrides]
        cfg = _compose(command, overrides)
        if cfg is not None:
            COMMANDS[command](cfg)
    except (ValueError, HydraException, OmegaConfBaseException) as err:
        print(f"voxfm {command}: error: {err}", file=sys.stderr)
        return EXIT_CODES["bad configuration"]
    except Preempted as stop:
        print(f"voxfm {command}: {stop}", file=sys.stderr)
        return PREEMPTED_EXIT_CODE
    except FloatingPointError as err:
        print(f"voxfm {command}: training diverged: {err}", file=sys.stderr)
        return EXIT_CODES["diverged"]
    except CheckpointWriteError as err:
        print(f"voxfm {command}: error: {err}", file=sys.stderr)
        return EXIT_CODES["checkpoint not written"]
    except OutputWriteError as err:
        print(f"voxfm {command}: error: {err}", file=sys.stderr)
        return EXIT_CODES["output not written"]
    return 0
