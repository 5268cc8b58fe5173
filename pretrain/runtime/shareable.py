"""What leaves the machine carries no absolute path: exports, fine-tuning results, events.jsonl and what goes to
W&B name a path by its last component (a run_dir, a shard set, an init_from export), never where it lies."""

from __future__ import annotations

PATH_KEYS = ("run_dir", "init_from", "shards")  # values that are paths whatever they look like


def path_name(value: str) -> str:
    """The last component of a path, URL or `pipe:` command (`/data/ct/shard-{0..9}.tar` → `shard-{0..9}.tar`)."""
    return value.rstrip("/").rsplit("/", 1)[-1]


def shareable_config(config, key: str = ""):
    """The stored config with no absolute path: values under `PATH_KEYS`, and any string that looks like a
    path (absolute, `~`, a URL or a `pipe:` command), reduced to their last component."""
    if isinstance(config, dict):
        return {k: shareable_config(v, k) for k, v in config.items()}
    if isinstance(config, list):
        return [shareable_config(v, key) for v in config]
    if isinstance(config, str) and (key in PATH_KEYS or config.startswith(("/", "~", "pipe:")) or "://" in config):
        return path_name(config)
    return config
