"""Voxel payload codec: blosc2 zstd + shuffle, nnU-Net's choice (see DESIGN.md, "Shard payload")."""

from __future__ import annotations

import blosc2
import numpy as np

# Decompression speed of zstd barely depends on the level; 5 buys ratio at little decode cost.
_CPARAMS = {"codec": blosc2.Codec.ZSTD, "clevel": 5, "filters": [blosc2.Filter.SHUFFLE]}


def encode(arr: np.ndarray) -> bytes:
    """Compress an n-d array (dtype and shape travel inside the frame)."""
    return blosc2.pack_array2(np.ascontiguousarray(arr), cparams=_CPARAMS)


def decode(frame: bytes) -> np.ndarray:
    """Inverse of `encode`."""
    return blosc2.unpack_array2(frame)
