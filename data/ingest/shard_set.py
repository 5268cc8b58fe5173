"""The shard set format: writing WebDataset tars of a target size plus `index.json` kept current per shard, and
reading a local set's index and samples (`voxfm.data.stream.shards` finds a set's shards for streaming).

One sample = `<key>.image.b2` (blosc2 voxels), optional `<key>.label.b2`, and `<key>.json` (metadata).
A shard is written under a temporary name and renamed when complete, then the index is rewritten
atomically, so a crash loses at most the shard in progress and a rerun picks up from there.

An index.json is data, never instructions: the shard names it lists must be plain file names (no folder, no
scheme), joined to the absolute folder, so a `pipe:` command can only ever come from the user's own
`data.shards`.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

from voxfm.data.ingest.safe_files import new_temp, write_text_atomic

INDEX = "index.json"
REPORT = "report.json"
SHARD_PATTERN = "shard-{:06d}.tar"
SHARD_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\.tar")  # what `voxfm shard` writes, and a little more


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=1))


def shard_name(name, where: str) -> str:
    """`name` if it is a plain shard file name (e.g. shard-000000.tar), else a ValueError naming it."""
    if not isinstance(name, str) or not SHARD_NAME.fullmatch(name):
        raise ValueError(
            f"{where}={name!r}: refused; a shard name must be a plain file name such as "
            "shard-000000.tar (letters, digits, '_', '-', '.', ending in .tar; no folder, no scheme)"
        )
    return name


def parse_index(text: str | bytes, where: str, config_required: bool = True) -> dict:
    """index.json's text → the index, checked: an object with a "shards" list of {"name": <plain file name>},
    a "samples" list of objects and a "config" object (or null, while `voxfm shard` has written nothing)."""
    try:
        index = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{where}: not valid JSON ({err})") from None
    if not isinstance(index, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(index).__name__}")
    for key in ("shards", "samples"):
        if not isinstance(index.get(key), list) or not all(isinstance(e, dict) for e in index[key]):
            raise ValueError(f'{where}: "{key}" must be a list of objects')
    for i, entry in enumerate(index["shards"]):
        shard_name(entry.get("name"), f"{where}: shards[{i}].name")
    config = index.get("config")
    if not (isinstance(config, dict) or (config is None and not config_required)):
        raise ValueError(f'{where}: "config" must be an object, got {json.dumps(config)}')
    return index


def load_index(output: Path) -> dict:
    path = output / INDEX
    if not path.exists():
        return {"format": "voxfm-shards/1", "config": None, "shards": [], "samples": []}
    return parse_index(path.read_text(), str(path), config_required=False)


def read_samples(folder: Path, samples: list[dict], parts: tuple[str, ...]) -> Iterator[tuple[dict, dict]]:
    """(index entry, {part: bytes, or None where the sample has no such part}) for the given index entries of a
    local shard set, opening each shard once."""
    for shard in sorted({shard_name(s.get("shard"), f"{folder / INDEX}: a sample's shard") for s in samples}):
        with tarfile.open(folder / shard) as tar:
            names = set(tar.getnames())
            for s in (s for s in samples if s["shard"] == shard):
                yield (
                    s,
                    {
                        p: tar.extractfile(f"{s['key']}.{p}").read() if f"{s['key']}.{p}" in names else None
                        for p in parts
                    },
                )


class ShardSetWriter:
    """Appends samples to `output/shard-NNNNNN.tar`, starting a new shard past `max_bytes` at the end of a
    group (a subject), so a group never straddles two shards."""

    def __init__(self, output: Path, index: dict, max_bytes: int):
        self.output, self.index, self.max_bytes = output, index, max_bytes
        self._tar = None
        self._pending: list[dict] = []
        self._bytes = 0

    def _open(self) -> None:
        name = SHARD_PATTERN.format(len(self.index["shards"]))
        self._name = name
        self._tmp, fd = new_temp(self.output / name)  # never through a link planted at shard-*.tar.tmp
        self._tar = tarfile.open(fileobj=os.fdopen(fd, "wb"), mode="w")

    def add(self, key: str, files: dict[str, bytes], meta: dict) -> None:
        """files: extension → bytes (e.g. {"image.b2": ..., "json": ...})."""
        if self._tar is None:
            self._open()
        for ext, payload in files.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size = len(payload)
            info.mtime = 0  # identical inputs give byte-identical shards
            self._tar.addfile(info, io.BytesIO(payload))
            self._bytes += len(payload) + 1024
        self._pending.append({**meta, "key": key, "shard": self._name})

    def end_group(self) -> None:
        """A subject's samples are all added: the shard may end here once it passed `max_bytes`."""
        if self._bytes >= self.max_bytes:
            self.flush()

    def flush(self) -> None:
        """Close the shard in progress, publish it, and record it in the index."""
        if self._tar is None:
            return
        self._tar.close()
        self._tar.fileobj.close()  # given to tarfile, so not closed by it
        os.replace(self._tmp, self.output / self._name)
        self.index["shards"].append({"name": self._name, "n_samples": len(self._pending), "bytes": self._bytes})
        self.index["samples"].extend(self._pending)
        write_json_atomic(self.output / INDEX, self.index)
        self._tar, self._pending, self._bytes = None, [], 0


def describe_shard_set(shards: str | Path) -> dict:
    """What a downstream user must reproduce: spacing, orientation, normalisation per modality."""
    path = Path(str(shards))
    if not (path / INDEX).exists():
        return {"spacing": None, "orientation": "RAS", "normalisation": None, "modalities": None}
    index = parse_index((path / INDEX).read_text(), f"data.shards={shards}: {INDEX}")
    pre = index["config"].get("preprocess")
    if not isinstance(pre, dict) or any(k not in pre for k in ("spacing", "percentiles", "ct_window")):
        raise ValueError(
            f"data.shards={shards}: {INDEX} has no config.preprocess with spacing, percentiles and "
            "ct_window; reshard with `voxfm shard`"
        )
    modalities: dict[str, int] = {}
    datasets: dict[str, int] = {}
    for s in index["samples"]:  # str(): a damaged entry is counted as what it says, and skipped when streamed
        modality, dataset = str(s.get("modality")), str(s.get("dataset", ""))
        modalities[modality] = modalities.get(modality, 0) + 1
        datasets[dataset] = datasets.get(dataset, 0) + 1
    robust = {
        "scheme": "percentile",
        "percentiles": pre["percentiles"],
        "note": "per volume: clip to these percentiles of its own voxels, map to [0, 1]",
    }
    return {
        "spacing": pre["spacing"],
        "orientation": "RAS",
        "normalisation": {
            "CT": {
                "scheme": "window",
                "low": pre["ct_window"][0],
                "high": pre["ct_window"][1],
                "note": "clip HU to [low, high], map to [0, 1]",
            },
            "MR": robust,
            "PET": robust,
            "unknown": robust,
        },
        "modalities": modalities,
        "datasets": datasets,
    }
