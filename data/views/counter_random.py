"""Random numbers as a pure function of a key tensor, so the views draw them inside their compiled graph.

A compiled graph takes no `torch.Generator`, and an eager draw is a kernel of its own before the graph (plus the
passes that apply it). Here every number is a hash of (key, stream, element index) in int64 tensor ops (SplitMix's
construction): the key is a [STREAMS, 2] int64 tensor on the training device, a key pair per draw (`step_key`: a
function of (seed, step, rank), hashed on the host, so views replay exactly after a resume), each draw takes the
next one, and the element index is an `arange`. Inside a compiled graph the hash fuses into the kernels that use it:
Gaussian noise over a whole batch of views costs no memory traffic.

The mixer is a 32-bit integer hash (xor-shift, multiply by 0x45D9F3B, twice): products stay below 2^60, so int64
arithmetic never overflows and eager, compiled, CPU and CUDA give the same bits.
"""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
_MULTIPLIER = 0x45D9F3B
_GOLDEN = 0x9E3779B9  # stream salts
_SALT = 0x85EBCA6B
_WEYL = 0x61C88647  # 2^32 − _GOLDEN: odd, below 2^31, so index × _WEYL stays below 2^63


def mix32(x, inner=0):
    """A 32-bit integer hash of x in [0, 2^32): Python ints and int64 tensors alike. `inner` (in [0, 2^32)) is
    xor-ed in between the two multiply rounds: hashes with different inner keys are different functions, not the
    same one shifted."""
    x = ((x ^ (x >> 16)) * _MULTIPLIER) & MASK32
    x = (((x ^ (x >> 16)) * _MULTIPLIER) & MASK32) ^ inner
    return x ^ (x >> 16)


STREAMS = 32  # draws per key: a view pipeline makes 6 (one view) to 12 (multi-crop with block masks)


def key_of(seed: int, step: int, rank: int, micro: int = 0) -> int:
    """The 64-bit key of (seed, step, rank[, micro-batch of an accumulated step]), in Python: no tensor, no kernel.
    64 bits: two (step, rank) pairs of a long many-GPU run do not share one."""
    halves = []
    for salt in (0, _SALT):
        key = salt
        for part in (seed, step, rank, *([micro] if micro else [])):
            key = mix32((key ^ (part & MASK32)) ^ mix32(((part >> 32) ^ salt) & MASK32))
        halves.append(key)
    return halves[0] | halves[1] << 32


def stream_keys(key: int) -> list[list[int]]:
    """The `STREAMS` (outer, inner) key pairs of the draws made from one 64-bit key, hashed on the host: inside the
    graph a draw only indexes its own (a hash of the key there would be expanded into every use of every draw)."""
    low, high = key & MASK32, key >> 32
    return [
        [mix32(low ^ ((s * _GOLDEN) & MASK32)), mix32(high ^ ((s * _SALT) & MASK32))] for s in range(1, STREAMS + 1)
    ]


def step_key(device: torch.device, seed: int, step: int, rank: int, micro: int = 0) -> torch.Tensor:
    """The keys of one training step (micro-batch `micro` of an accumulated step) on `device`: [STREAMS, 2] int64,
    a pair per draw. On CUDA they travel by a pinned, asynchronous copy (a pageable one would wait for the queue);
    the step's only host-to-device transfer besides the batch."""
    key = torch.tensor(stream_keys(key_of(seed, step, rank, micro)), dtype=torch.int64)
    if device.type == "cuda":
        key = key.pin_memory()
    return key.to(device, non_blocking=True)


def as_key(source: torch.Tensor | torch.Generator | int, device: torch.device | None = None) -> torch.Tensor:
    """A key tensor from a key tensor, a seeded `torch.Generator` (its seed and device) or an int (on `device`)."""
    if isinstance(source, torch.Tensor):
        return source
    if isinstance(source, torch.Generator):
        source, device = source.initial_seed(), source.device
    return torch.tensor(stream_keys(key_of(int(source), 0, 0)), dtype=torch.int64, device=device)


def uniform_int(u: torch.Tensor, high: int) -> torch.Tensor:
    """Uniform floats in [0, 1) → uniform int64 in [0, high]."""
    return (u * (high + 1)).long().clamp_max(high)


class CounterRandom:
    """Draws from one key: each call takes the next stream, so a fixed sequence of calls is a fixed sequence of
    numbers. Build one inside the function that uses the numbers (it holds no state across calls of that function).
    Each call is one hash in the compiled graph, whose lowering time grows with their number: draw the small
    per-sample numbers of a batch together (`rand(n, k)`, a column each)."""

    def __init__(self, key: torch.Tensor):
        self.key, self.device, self._stream = key, key.device, 0
        if key.shape != (STREAMS, 2):
            raise ValueError(f"a key is [{STREAMS}, 2] int64 (`step_key`, `as_key`); got shape {list(key.shape)}")

    def bits(self, *shape: int) -> torch.Tensor:
        """Uniform int64 in [0, 2^32) of `shape`: SplitMix's construction in 32 bits, the hash of a Weyl sequence
        (index × an odd golden-ratio constant + the stream's outer key), with the stream's inner key xor-ed between
        the hash's rounds, so two streams are different functions of the index rather than one sequence shifted.
        One hash per element keeps the compiled graph's expression small: inductor expands every use of an
        intermediate, and nested hashes multiply. The index wraps at 2^32 elements per draw."""
        if self._stream == STREAMS:
            raise RuntimeError(f"more than {STREAMS} draws from one key: raise counter_random.STREAMS")
        outer, inner = self.key[self._stream, 0], self.key[self._stream, 1]
        self._stream += 1
        i = torch.arange(math.prod(shape), device=self.device, dtype=torch.int64).view(shape)
        return mix32((((i & MASK32) * _WEYL) + outer) & MASK32, inner)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform float32 in [0, 1), 24 random bits each."""
        return (self.bits(*shape) >> 8).float() * (1.0 / (1 << 24))

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        """Uniform int64 in [0, high] (inclusive; `high` a Python int below 2^24)."""
        return uniform_int(self.rand(*shape), high)

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal float32 (Box–Muller on two uniform draws; 1 − u keeps the logarithm finite)."""
        radius = torch.sqrt(-2.0 * torch.log1p(-self.rand(*shape)))
        return radius * torch.cos((2 * math.pi) * self.rand(*shape))

    def ranking_keys(self, rows: int, n: int) -> torch.Tensor:
        """[rows, n] int64, distinct within a row (random bits above the column index): sorting a row is a
        uniformly random permutation without ties, so eager and compiled sorts agree."""
        if n >= 1 << 20:
            raise ValueError(f"ranking_keys: {n} columns; at most 2^20 (the column index sits in the low 20 bits)")
        column = torch.arange(n, device=self.device, dtype=torch.int64)
        return (self.bits(rows, n) << 20) | column
