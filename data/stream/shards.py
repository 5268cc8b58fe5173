"""Finding a shard set's shards for streaming: a local folder (its index.json), an `http(s)://host/set/` URL (its
index.json, read up to `MAX_REMOTE_INDEX_BYTES`), a brace pattern or a `pipe:` command. Shard names an index lists
are plain file names (`voxfm.data.ingest.shard_set.shard_name`), so a `pipe:` command can only ever come from the
user's own `data.shards`.
"""

from __future__ import annotations

from pathlib import Path

from braceexpand import braceexpand

from voxfm.data.ingest.shard_set import INDEX, REPORT, parse_index

MAX_REMOTE_INDEX_BYTES = 64 << 20


def _listed(entries: list[dict], where: str, empty: str) -> tuple[list[str], int | None]:
    """An index's shard entries → (their names, the samples they hold; None where a count is missing). A set whose
    shards all hold no sample would make every data worker read empty shards forever: refused here, naming them."""
    names = [s["name"] for s in entries]
    if not names:
        raise ValueError(f"{where}: the shard set is empty{empty}")
    counts = [s.get("n_samples") for s in entries]
    if not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in counts):
        return names, None
    if sum(counts) == 0:
        listed = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        raise ValueError(f"{where}: its {INDEX} lists no samples in its {len(names)} shard(s) ({listed})")
    return names, sum(counts)


def _remote_index(url: str) -> tuple[list[str], int | None]:
    """`http(s)://host/set/` → (the shard URLs its index.json names, the samples it lists or None)."""
    import urllib.request

    try:
        with urllib.request.urlopen(url + INDEX, timeout=30) as response:
            text = response.read(MAX_REMOTE_INDEX_BYTES + 1)
    except (OSError, ValueError) as err:
        raise ValueError(f"data.shards={url}: cannot read {url + INDEX} ({type(err).__name__}: {err})") from err
    if len(text) > MAX_REMOTE_INDEX_BYTES:
        raise ValueError(
            f"data.shards={url}: {url + INDEX} is over {MAX_REMOTE_INDEX_BYTES:,} bytes; refused "
            "(a shard set's index is a few MB)"
        )
    names, n_samples = _listed(parse_index(text, f"data.shards={url}: {INDEX}")["shards"], f"data.shards={url}", "")
    return [url + n for n in names], n_samples


def shard_urls(shards: str | Path) -> list[str]:
    """The shard URLs of `shards` (see `shard_set`)."""
    return shard_set(shards)[0]


def shard_set(shards: str | Path) -> tuple[list[str], int | None]:
    """(shard URLs, the samples its index.json lists: None without one or without counts). A shard set folder (with
    index.json) → its tar paths; `http(s)://.../` (ending in a slash) → the shards its index.json names; a brace
    pattern (`shard-{000000..000099}.tar`, local, a URL or a `pipe:` command) → what it expands to. Local paths
    must exist: failing here beats a stream that skips unreadable shards forever."""
    if str(shards).startswith(("http://", "https://")) and str(shards).endswith("/"):
        return _remote_index(str(shards))
    path = Path(str(shards))
    if path.is_dir():
        index = path / INDEX
        if not index.exists():
            raise ValueError(f"data.shards={shards}: folder has no {INDEX}; create one with `voxfm shard`")
        entries = parse_index(index.read_text(), f"data.shards={shards}: {INDEX}")["shards"]
        names, n_samples = _listed(entries, f"data.shards={shards}", f" (see its {REPORT})")
        # absolute: `Path(".") / "pipe:cmd"` is the string "pipe:cmd", which webdataset would run
        return [str(path.absolute() / n) for n in names], n_samples
    if path.is_file() and path.name == INDEX:
        raise ValueError(f"data.shards={shards}: that is the shard set's index; give its folder: {path.parent}")
    urls = [u for part in str(shards).split("::") for u in braceexpand(part)]  # webdataset's URL list syntax
    local = [u for u in urls if "://" not in u and not u.startswith("pipe:")]
    if any(not u.endswith((".tar", ".tar.gz", ".tgz")) and Path(u).is_file() for u in local):
        wrong = next(u for u in local if not u.endswith((".tar", ".tar.gz", ".tgz")) and Path(u).is_file())
        raise ValueError(f"data.shards={shards}: {wrong} is no shard (.tar); give a shard set's folder")
    missing = [u for u in urls if "://" not in u and not u.startswith("pipe:") and not Path(u).is_file()]
    if missing:
        raise ValueError(f"data.shards={shards}: {len(missing)} of {len(urls)} shard(s) not found, e.g. {missing[0]}")
    return urls, None
