"""Streaming shards into training crops with webdataset.

Each data-loader worker on each rank draws shards at random with replacement (`ResampledShards`)
from a seed that mixes (seed, rank, worker), so the stream is infinite, differs per rank and
worker, and needs no shared filesystem listing beyond the shard URLs. Workers decode whole
volumes (blosc2) and cut several crops per volume, because decoding, not cropping, is the cost.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from data import payload
from data.crops import random_crops
from data.preprocess import normalise
from data.shards import shard_urls


def decode_sample(sample: dict) -> tuple[np.ndarray, dict]:
    """Raw webdataset sample → (normalised float32 volume [X, Y, Z] in [0, 1], metadata)."""
    meta = json.loads(sample["json"])
    vol = normalise(payload.decode(sample["image.b2"]), meta["normalisation"])
    return vol, meta


class CropStream(IterableDataset):
    """Infinite stream of {"image": [1, D, H, W] float32, "modality": str} crops."""

    def __init__(self, shards: str, crop_size, crops_per_volume: int = 4, foreground_prob: float = 0.67,
                 shuffle_buffer: int = 64, seed: int = 0):
        if crops_per_volume < 1:
            raise ValueError(f"data.crops_per_volume={crops_per_volume}: expected >= 1")
        if not 0.0 <= foreground_prob <= 1.0:
            raise ValueError(f"data.foreground_prob={foreground_prob}: expected a probability in [0, 1]")
        self.urls = shard_urls(shards)
        self.crop_size = tuple(crop_size) if not isinstance(crop_size, int) else (crop_size,) * 3
        self.crops_per_volume, self.foreground_prob = crops_per_volume, foreground_prob
        self.shuffle_buffer, self.seed = shuffle_buffer, seed

    def _worker_seed(self) -> list[int]:
        info = torch.utils.data.get_worker_info()
        rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
        return [self.seed, rank, info.id if info else 0]

    def _crops(self, samples: Iterator[dict]) -> Iterator[dict]:
        rng = np.random.default_rng(self._worker_seed())
        for sample in samples:
            # Crop the raw voxels, then normalise only the crops: a fraction of the volume's work.
            meta = json.loads(sample["json"])
            norm = meta["normalisation"]
            crops = random_crops(payload.decode(sample["image.b2"]), meta["foreground_points"], self.crop_size,
                                 self.crops_per_volume, self.foreground_prob, rng, pad_value=norm["low"])
            for crop in crops:
                yield {"image": torch.from_numpy(normalise(crop, norm))[None], "modality": meta["modality"]}

    def __iter__(self):
        pipeline = wds.DataPipeline(
            wds.ResampledShards(self.urls, seed=self.seed, deterministic=True),
            wds.tarfile_to_samples(handler=wds.warn_and_continue),
            self._crops,
            wds.shuffle(self.shuffle_buffer, initial=self.shuffle_buffer // 2, seed=str(self._worker_seed())),
        )
        return iter(pipeline)


def crop_loader(stream: CropStream, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(stream, batch_size=batch_size, num_workers=num_workers, pin_memory=torch.cuda.is_available(),
                      persistent_workers=num_workers > 0, prefetch_factor=4 if num_workers > 0 else None)
