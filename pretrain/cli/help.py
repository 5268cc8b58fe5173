"""`voxfm <command> --help`: what the command does, every key it takes with its default and the comment beside it
in `conf/<command>.yaml`, the options of each config group, and an example. One source: the YAML files the
command composes, read as text so their comments survive (OmegaConf drops them)."""

from __future__ import annotations

import re
from pathlib import Path

from voxfm.pretrain.cli.compose import CONF_DIR

KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w.]*):(?P<value>[^#]*?)\s*(?:#\s*(?P<comment>.*))?$")
GROUP = re.compile(r"^\s*-\s*(?P<group>\w+):\s*(?P<option>[\w./-]+)")
EXAMPLES = {
    "shard": "voxfm shard input=/data/nnUNet_raw output=/data/shards workers=8 dry_run=true",
    "inspect": "voxfm inspect shards=/data/shards n_samples=12",
    "plot": "voxfm plot run_dir=[runs/mae,runs/mae_lr3e-4] output=compare.png",
    "pretrain": "voxfm pretrain experiment=demo data.shards=/data/shards run_dir=runs/demo",
    "finetune": "voxfm finetune experiment=demo_finetune backbone=runs/export data.shards=/data/labelled run_dir=ft",
    "export": "voxfm export checkpoint=runs/demo output=runs/export format=monai",
    "bench/data": "voxfm bench data shards=/data/shards",
    "bench/model": "voxfm bench model experiment=mae_vit_b data.batch_size=64",
    "bench/loop": "voxfm bench loop experiment=demo shards=/data/shards",
    "bench/attention": "voxfm bench attention scale=0.5",
    "bench/ingest": "voxfm bench ingest input=/data/nnUNet_raw max_volumes=8",
}


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _keys(lines: list[str], prefix: str = "") -> list[str]:
    """`key: default   comment` per key of a YAML file's lines (nested keys indented; `_target_`-like keys not)."""
    out, skip_below, comment_at = [], None, None
    for line in lines:
        key = KEY.match(line)
        # a comment-only line whose "#" sits under the previous key's comment continues it; any other (a section
        # header) does not
        if comment_at is not None and line.lstrip().startswith("#") and line.index("#") == comment_at:
            out.append(f"  {'':<40} {line.lstrip('# ').rstrip()}")
            continue
        comment_at = None
        if key is None or line.lstrip().startswith(("#", "-")):
            continue
        depth = len(key["indent"]) // 2
        if skip_below is not None and depth > skip_below:
            continue
        skip_below = depth if key["key"] in ("defaults", "hydra") or key["key"].startswith("_") else None
        if skip_below is not None:
            continue
        value = key["value"].strip() or ("(group)" if not key["comment"] else "")
        shown = f"{'  ' * depth}{prefix if depth == 0 else ''}{key['key']}: {value}"
        out.append(f"  {shown:<40} {key['comment'] or ''}".rstrip())
        comment_at = line.index("#") if key["comment"] else None
    return out


def command_help(name: str, purpose: str) -> str:
    """The help text of `conf/<name>.yaml` (`bench/model` for a bench), its groups' default files' keys too."""
    lines = (CONF_DIR / f"{name}.yaml").read_text().splitlines()
    heading = [line.lstrip("# ").rstrip() for line in lines[:1] if line.startswith("#") and "@package" not in line]
    out = [f"voxfm {name.replace('/', ' ')}: {purpose}", *heading, ""]
    groups = [GROUP.match(line) for line in lines if GROUP.match(line)]
    if groups:
        out.append("config groups (group=option; an option is conf/<group>/<option>.yaml):")
        for g in groups:
            options = _options(g["group"]) if (CONF_DIR / g["group"]).is_dir() else []
            out.append(f"  {g['group'] + '=' + g['option']:<40} options: {', '.join(options) or '-'}")
        out.append("")
    out.append("keys (key=value: the default, then what it is):")
    out += _keys(lines)
    for g in groups:
        path = CONF_DIR / g["group"] / f"{g['option']}.yaml"
        if g["group"] != "experiment" and path.is_file():
            out += _keys(path.read_text().splitlines(), prefix=f"{g['group']}.")
    out += ["", f"example: {EXAMPLES.get(name, f'voxfm {name}')}"]
    out.append(f"the files, with every comment: {Path(CONF_DIR) / (name + '.yaml')} (and conf/<group>/<option>.yaml)")
    return "\n".join(out)


def wants_help(overrides: list[str]) -> bool:
    return any(o in ("-h", "--help") for o in overrides)
