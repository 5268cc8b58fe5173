"""Voxel payload codec: blosc2 with byte shuffle (nnU-Net's choice; see DESIGN.md, "Shard payload").

Default lz4hc: measured here (BENCHMARKS.md) it decodes about twice as fast as zstd, ≥ 8x nibabel's
.nii.gz, at a ratio still above .nii.gz; zstd gives the best ratio when storage matters more.
`voxfm bench data` measures both on your own volumes. The codec travels inside each frame, so
readers never need to know which one a shard set used.
"""

from __future__ import annotations

from typing import Literal

import blosc2
import numpy as np

Codec = Literal["zstd", "lz4hc"]
CODECS: dict[str, dict] = {
    # Decompression speed of zstd barely depends on the level; 5 buys ratio at little decode cost.
    "zstd": {"codec": blosc2.Codec.ZSTD, "clevel": 5, "filters": [blosc2.Filter.SHUFFLE]},
    # Level 3 encodes 3x faster than 9 (155 vs 49 MB/s on the real scans, one thread), decodes as fast, and
    # stays smaller than .nii.gz (1.06x; level 9: 1.11x) — BENCHMARKS.md, "Ingest".
    "lz4hc": {"codec": blosc2.Codec.LZ4HC, "clevel": 3, "filters": [blosc2.Filter.SHUFFLE]},
}


def encode(arr: np.ndarray, codec: Codec = "lz4hc") -> bytes:
    """Compress an n-d array (dtype and shape travel inside the frame)."""
    if codec not in CODECS:
        raise ValueError(f"codec={codec!r}; allowed: {list(CODECS)}")
    return blosc2.pack_array2(np.ascontiguousarray(arr), cparams=CODECS[codec])


def decode(frame: bytes) -> np.ndarray:
    """Inverse of `encode`, whatever the codec."""
    return blosc2.unpack_array2(frame)
