"""What each `voxfm` command runs once its config is composed and checked: the heavy imports happen here, after
`pretrain.config` has accepted the config."""

from __future__ import annotations

import sys

from omegaconf import DictConfig, OmegaConf

from voxfm.pretrain.errors import OutputWriteError, config_errors


def shard_report(cfg: DictConfig) -> dict:
    """`voxfm shard`'s work on its checked config (the command and `voxfm.shard` alike): the report, or with
    `dry_run=true` the plan (nothing written)."""
    from voxfm.data.ingest.plan import plan_shard
    from voxfm.data.ingest.run import run_shard

    # run_shard turns every input's failure into a rejection: a ValueError out of it is about its arguments
    # (input=, output=, the options), checked in data/, which does not import pretrain/
    with config_errors():
        preprocess = OmegaConf.to_container(cfg.preprocess)
        if cfg.dry_run:
            return plan_shard(cfg.input, preprocess, cfg.layout, cfg.channels, output=cfg.output)
        return run_shard(
            cfg.input,
            cfg.output,
            preprocess,
            cfg.shard_max_mb,
            cfg.codec,
            cfg.progress,
            cfg.workers,
            cfg.layout,
            cfg.channels,
            cfg.unknown_modality,
        )


def shard(cfg: DictConfig) -> None:
    from voxfm.data.ingest.plan import format_plan
    from voxfm.data.ingest.run import WorkerDied
    from voxfm.data.ingest.tally import format_tally, intensities_warning

    try:
        report = shard_report(cfg)
    except WorkerDied as err:
        print(f"voxfm shard: error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    except OSError as err:  # inputs' errors are rejections (or a ValueError naming input=): this is the output
        raise OutputWriteError(
            f"could not write output={cfg.output}: {err}; the shards published so far are "
            "kept: free space (or fix permissions) and rerun the same command"
        ) from None
    if cfg.dry_run:
        print(format_plan(report, cfg.input))
        return
    print(
        f"sharded {report['n_sharded']}/{report['n_inputs']} inputs ({report['n_skipped']} already done), "
        f"rejected {report['n_rejected']}, ignored {report['n_ignored']} other file(s); {report['n_shards']} "
        f"shard(s) in {cfg.output} ({report['seconds']} s, {report['workers']} worker(s))"
    )
    print("\n".join(format_tally(report)))
    for r in report["rejected"]:
        print(f"  rejected {r['path']}: {r['reason']}")
    if report["n_ignored"]:
        print(f"  ignored (not an image voxfm reads): {report['n_ignored']}, listed in {cfg.output}/report.json")
    for note in report["notes"]:
        print(f"  note: {note}")
    if warning := intensities_warning(report):
        print(warning)


def pretrain(cfg: DictConfig) -> None:
    """The CLI has run `validate_pretrain` and the package check on this config (`pretrain.cli.main`)."""
    from voxfm.pretrain.launch.run import run_pretrain

    run_pretrain(cfg, validated=True)


def export(cfg: DictConfig) -> None:
    from voxfm.pretrain.export.run import run_export

    out = run_export(cfg.checkpoint, cfg.output, cfg.in_channels, cfg.format, cfg.overwrite, cfg.student)
    who = f", student {cfg.student}" if cfg.student else ""
    print(
        f"exported ({cfg.format}{who}) to {out}: "
        + ", ".join(sorted(p.name for p in out.iterdir() if p.name[0] != "."))
    )
    if cfg.format == "nnssl":
        import json

        meta = json.loads((out / "backbone.json").read_text())
        if meta["nnssl_architecture"]["arch_class_name"] == meta["class"]:  # not one of nnU-Net's named presets
            print(
                f"warning: nnU-Net's nnUNetv2_train_pretrained builds only its named presets, and this "
                f"{meta['class'].rsplit('.', 1)[-1]} is not one: see {out / 'README.md'} (pretrain model=primus_m "
                "for PrimusM)",
                file=sys.stderr,
            )


def finetune(cfg: DictConfig) -> None:
    from voxfm.data.stream.shards import shard_urls
    from voxfm.pretrain.launch.finetune import results_table, run_finetune

    with config_errors():  # data.shards= names a shard set (data/'s check, before a network is built)
        shard_urls(cfg.data.shards)
    results = run_finetune(cfg)
    print(results_table(results))
    print(
        f"wrote {cfg.run_dir}/results.json and results.md; metrics {cfg.run_dir}/<arm>/metrics/metrics.csv, "
        f"checkpoints {cfg.run_dir}/<arm>/checkpoints/ (rerunning the same command resumes an unfinished arm)"
    )


def inspect(cfg: DictConfig) -> None:
    from voxfm.data.ingest.inspect import format_summary, inspect_shards

    # inspect_shards reads the shard set it is given: its ValueErrors say that shards= is not one voxfm can read
    with config_errors():
        summary = inspect_shards(cfg.shards, cfg.output, cfg.n_samples, cfg.seed)
    print(format_summary(summary))
    print(f"wrote {summary['montage']} and summary.json beside it")


def plot(cfg: DictConfig) -> None:
    from pathlib import Path

    from voxfm.pretrain.runtime.curves import plot_runs

    runs = [cfg.run_dir] if isinstance(cfg.run_dir, str) else list(cfg.run_dir)
    default = Path(runs[0]) / "metrics.png" if len(runs) == 1 else Path("plot.png")
    with config_errors():  # a run_dir without metrics: named, exit 2
        out = plot_runs([Path(r) for r in runs], Path(cfg.output) if cfg.output else default)
    print(f"wrote {out}")


PROGRAMS = {
    "shard": shard,
    "pretrain": pretrain,
    "export": export,
    "inspect": inspect,
    "finetune": finetune,
    "plot": plot,
}
