"""Voxel payload codec: blosc2 with byte shuffle (nnU-Net's choice; README, "Design": shard payload).

Default lz4hc: measured here (BENCHMARKS.md) it decodes about twice as fast as zstd, ≥ 8x nibabel's
.nii.gz, at a ratio still above .nii.gz; zstd gives the best ratio when storage matters more.
`voxfm bench data` measures both on your own volumes. The codec travels inside each frame, so
readers never need to know which one a shard set used.

A frame is data from a shard set that may come from anyone: before blosc2 decodes a byte, `decode` checks the
frame's header — a numeric dtype from `DTYPES` (blosc2 would write raw bytes into object pointers for `|O`), a
3-D shape equal to the sample's metadata, a decoded size equal to the frame's own byte count (else the
output holds uninitialised memory) and under a byte budget (a 17 KB frame can decode to 256 MiB).
"""

from __future__ import annotations

import math
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


# What ingest writes: a source's own integer type (NIfTI/DICOM), float32, or a label map's uint8 / int32.
DTYPES = ("int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "float16", "float32")
_DTYPE_STRS = {
    np.dtype(n).newbyteorder(order).str: np.dtype(n).newbyteorder(order) for n in DTYPES for order in "<>"
}  # e.g. "<i2", ">i2" (big-endian NIfTI), "|u1"
MAX_SAMPLE_MB = 2048  # default byte budget of one decoded volume (`data.max_sample_mb`)


def _header(frame: bytes) -> tuple[blosc2.SChunk, tuple, str]:
    try:
        schunk = blosc2.schunk_from_cframe(frame, False)  # reads the header and metadata only
        _, shape, dtype = schunk.vlmeta["__pack_tensor__"]
    except Exception as err:  # anything a damaged frame makes blosc2 raise: the sample is unreadable
        raise ValueError(f"payload: not a blosc2 array frame ({type(err).__name__}: {err})") from None
    return schunk, shape, dtype


def decode(frame: bytes, shape=None, max_mb: float = MAX_SAMPLE_MB) -> np.ndarray:
    """Inverse of `encode`, whatever the codec: a 3-D array, after checking the frame's header (dtype in `DTYPES`,
    3-D, `shape` if given — the sample's metadata shape —, byte count, at most `max_mb` MiB decoded)."""
    schunk, stored, dtype = _header(frame)
    if not isinstance(dtype, str) or dtype not in _DTYPE_STRS:
        raise ValueError(f"payload: dtype {dtype!r} refused; allowed: {', '.join(DTYPES)}")
    if (
        not isinstance(stored, (list, tuple))
        or len(stored) != 3
        or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in stored)
    ):
        raise ValueError(f"payload: shape {stored!r} refused; expected 3 positive integers [X, Y, Z]")
    if shape is not None and list(stored) != list(shape):
        raise ValueError(f"payload: shape {list(stored)} differs from the sample's metadata shape {shape}")
    dtype = _DTYPE_STRS[dtype]
    nbytes = math.prod(stored) * dtype.itemsize
    if nbytes > max_mb * 2**20:
        raise ValueError(
            f"payload: {list(stored)} {dtype} decodes to {nbytes / 2**20:.0f} MiB, over the budget of "
            f"{max_mb} MiB (data.max_sample_mb)"
        )
    if nbytes != schunk.nbytes:
        raise ValueError(f"payload: {list(stored)} {dtype} needs {nbytes} bytes but the frame holds {schunk.nbytes}")
    out = np.empty(tuple(stored), dtype=dtype)
    schunk.dparams = blosc2.DParams(nthreads=1)  # one core per data worker: the workers are the parallelism
    schunk.get_slice(out=out)
    return out
