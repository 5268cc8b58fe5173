"""The `voxfm` command: `voxfm <subcommand> key=value ...` (Hydra overrides). `python -m voxfm` too.

Every command's config is composed and checked against its schema (`pretrain.config`) before torch, Lightning or
a data library is imported; what goes wrong is reported in one line with the exit code of
`pretrain.errors.EXIT_CODES`, and anything else is a crash with its traceback (exit 1)."""

from __future__ import annotations

import os
import sys

from voxfm.pretrain.cli.bench import BENCHES
from voxfm.pretrain.cli.compose import CONF_DIR, checked_config
from voxfm.pretrain.cli.help import command_help, wants_help
from voxfm.pretrain.cli.info import command_info, wants_info
from voxfm.pretrain.cli.launchers import launch, launcher_name, split_launcher
from voxfm.pretrain.cli.programs import PROGRAMS
from voxfm.pretrain.cli.sweep import is_sweep, jobs
from voxfm.pretrain.config.packages import from_import_error
from voxfm.pretrain.errors import ConfigError, exit_code

USAGE = """usage: voxfm <command> [key=value ...]     (voxfm --version: the installed version)

commands:
  shard     input=<dir|manifest.csv> output=<dir> [workers=N] [dry_run=true]
                                                     NIfTI volumes, DICOM series (nnU-Net, Decathlon, BIDS
                                                     or plain folders) -> WebDataset shards
  inspect   shards=<dir> [output=<dir>]                counts, spacing/shape distributions, rejections, a montage PNG
  plot      run_dir=<dir>|[<dir>,<dir>] [output=<png>]
                                                     the metric curves of one run, or several side by side
  pretrain  experiment=<name> data.shards=<dir> run_dir=<dir>
                                                     train (reruns with the same run_dir resume)
  finetune  experiment=<name> backbone=<export|none> data.shards=<dir> run_dir=<dir> [compare_scratch=true]
                                                     segmentation fine-tune, Dice per class on held-out volumes
  export    checkpoint=<ckpt|run_dir> output=<dir> [format=monai|nnunet|nnssl|full] [in_channels=N] [student=<name>]
                                                     backbone.safetensors + backbone.json for MONAI
  bench     data shards=<dir> [experiment=<name>]      decode MB/s of shards vs nibabel, regions/s per worker
  bench     model experiment=<name> [steps=N] [predict=h100|h200] [kernels=true]
                                                     voxfm's training step, eager and compiled, vs MONAI's; or a
                                                     GPU's step predicted here; or the compiled step's kernels
  bench     loop experiment=<name> shards=<dir> [steps=N]
                                                     that step bare, in pretrain's loop on the shards, and fed
                                                     from memory: samples/s, data wait, shard GB/s, host RSS
  bench     attention [scale=F]                        SDPA forward + backward per backend at the ViT shapes
  bench     ingest input=<dir|manifest.csv>            voxfm shard's per-volume work vs MONAI's load/orient/resample

Every key of conf/<command>.yaml can be overridden; `voxfm <command> --help` lists them with their defaults,
`voxfm <command> --cfg` prints the composed config, `voxfm <command> --info` the files it comes from and the sweep
launchers installed (`voxfm <command> -m key=a,b ...` sweeps).
experiments: {experiments}
"""


def _usage() -> str:
    experiments = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
    experiments += sorted(p.stem for p in (CONF_DIR / "finetune_experiment").glob("*.yaml"))
    return USAGE.format(experiments=", ".join(experiments))


def _bench_usage() -> str:
    lines = USAGE.splitlines()
    first = next(i for i, line in enumerate(lines) if line.startswith("  bench"))
    last = max(i for i, line in enumerate(lines) if line.startswith("  bench"))
    last += next(i for i, line in enumerate(lines[last + 1 :]) if not line.startswith(" " * 20))  # its continuation
    benches = "\n".join(lines[first : last + 1])
    return f"usage: voxfm bench <name> [key=value ...]\n\n{benches}\n\n`voxfm bench <name> --help` lists its keys."


PURPOSES = {
    "shard": "NIfTI volumes and DICOM series (nnU-Net, Decathlon, BIDS or plain folders, or a manifest) -> shards",
    "inspect": "what a shard set holds: counts, distributions, rejections, a montage PNG",
    "plot": "the metric curves of a run (run_dir/metrics.png), or of several runs side by side",
    "pretrain": "self-supervised pretraining of a backbone on shards (rerunning with the same run_dir resumes)",
    "finetune": "segmentation fine-tuning of an exported backbone, Dice per class on held-out volumes",
    "export": "backbone weights + description for MONAI, nnU-Net, nnssl, or voxfm (format=full)",
    "bench/data": "decode MB/s of shards vs nibabel, regions/s per worker",
    "bench/model": "voxfm's training step, eager and compiled, vs MONAI's",
    "bench/loop": "the step bare, in pretrain's loop on the shards, and fed from memory",
    "bench/attention": "SDPA forward + backward per backend at the ViT shapes",
    "bench/ingest": "voxfm shard's per-volume work vs MONAI's load/orient/resample",
}


def run(command: str, overrides: list[str]) -> None:
    name = f"bench/{overrides[0]}" if command == "bench" else command
    if wants_help(overrides[1:] if command == "bench" else overrides):
        print(command_help(name, PURPOSES[name]))
        return
    if wants_info(overrides):
        print(command_info(name, overrides[1:] if command == "bench" else overrides))
        return
    if command == "bench":
        BENCHES[overrides[0]](overrides[1:])
        return
    cfg = checked_config(command, overrides)
    if cfg is not None:
        PROGRAMS[command](cfg)


def main(argv: list[str] | None = None) -> int:
    try:
        code = _main(sys.argv[1:] if argv is None else argv)
        sys.stdout.flush()  # here, where a reader that has gone is caught, not at exit
        return code
    except BrokenPipeError:  # `voxfm ... | head`: the reader has gone; end quietly, as other command-line tools do
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # Python's own flush at exit must not fail
        return 0


def _main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from voxfm import __version__

        print(f"voxfm {__version__}")
        return 0
    command, overrides = argv[0], argv[1:]
    if command not in (*PROGRAMS, "bench"):
        print(f"voxfm: unknown command {command!r}; choose from {[*PROGRAMS, 'bench']}\n\n{_usage()}", file=sys.stderr)
        return exit_code(ConfigError())[0]
    if command == "bench" and overrides[:1] in (["-h"], ["--help"]):
        print(_bench_usage())
        return 0
    if command == "bench" and (not overrides or overrides[0] not in BENCHES):
        print(
            f"voxfm bench: say what to benchmark, one of {list(BENCHES)}: `voxfm bench data shards=<dir>`, "
            "`voxfm bench model experiment=<name>`, `voxfm bench loop experiment=<name> shards=<dir>`, "
            "`voxfm bench ingest input=<dir>` or `voxfm bench attention`",
            file=sys.stderr,
        )
        return exit_code(ConfigError())[0]
    if is_sweep(overrides) and not wants_help(overrides):
        if command == "bench":
            print("voxfm bench: error: -m: benches are not swept; run one bench per setting", file=sys.stderr)
            return exit_code(ConfigError())[0]
        return _sweep(command, overrides)
    return _run_reported(command, overrides)


def _run_reported(command: str, overrides: list[str]) -> int:
    try:
        run(command, overrides)
    except Exception as err:
        err = from_import_error(err) or err  # an optional package that is not installed: a configuration error
        mapped = exit_code(err)
        if mapped is None:
            raise
        code, words = mapped
        name = f"{command} {overrides[0]}" if command == "bench" else command
        print(f"voxfm {name}: {words + ': ' if words else ''}{err}", file=sys.stderr)
        return code
    return 0


def _sweep(command: str, overrides: list[str]) -> int:
    """Every job of the sweep through Hydra's launcher plugin (`hydra/launcher=basic` by default: one after another
    in this process); the exit code is the first failed job's (0 if none failed). Each job's config is checked
    before any is launched."""
    try:
        rest, hydra_overrides = split_launcher(overrides)
        todo = jobs(rest)
        for job in todo:
            checked_config(command, job)
    except ConfigError as err:
        print(f"voxfm {command}: error: {err}", file=sys.stderr)
        return exit_code(err)[0]
    name = launcher_name(hydra_overrides)
    for i, job in enumerate(todo, start=1):
        print(f"voxfm: sweep job {i}/{len(todo)} ({name}): {' '.join(job)}", flush=True)
    try:
        returned = launch(command, _run_reported, todo, hydra_overrides)
    except ConfigError as err:
        print(f"voxfm {command}: error: {err}", file=sys.stderr)
        return exit_code(err)[0]
    codes = [r if isinstance(r, int) else 1 for r in returned]
    failed = [(i, c) for i, c in enumerate(codes, start=1) if c]
    print(f"voxfm: sweep of {len(todo)} job(s): " + (f"failed {failed} (job, exit code)" if failed else "all finished"))
    return failed[0][1] if failed else 0
