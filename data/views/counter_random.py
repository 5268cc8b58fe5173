"""Random numbers as a pure function of a key tensor, so the views draw them inside their compiled graph.

A compiled graph takes no `torch.Generator`, and an eager draw is a kernel of its own before the graph (plus the
passes that apply it). Here every number is a hash of (key, stream, element index) in int64 tensor ops: the key is a
0-d int64 tensor on the training device (`step_key`: a function of (seed, step, rank), so views replay exactly after
a resume), each draw takes the next stream, and the element index is an `arange`. Inside a compiled graph the hash
fuses into the kernels that use it: Gaussian noise over a whole batch of views costs no memory traffic.

The mixer is a 32-bit integer hash (xor-shift, multiply by 0x45D9F3B, twice): products stay below 2^60, so int64
arithmetic never overflows and eager, compiled, CPU and CUDA give the same bits.
"""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
_MULTIPLIER = 0x45D9F3B
_GOLDEN = 0x9E3779B9  # the stream stride: distinct streams start far apart in the hash's input


def mix32(x):
    """A 32-bit integer hash of x in [0, 2^32): Python ints and int64 tensors alike."""
    x = ((x ^ (x >> 16)) * _MULTIPLIER) & MASK32
    x = ((x ^ (x >> 16)) * _MULTIPLIER) & MASK32
    return x ^ (x >> 16)


def key_of(seed: int, step: int, rank: int) -> int:
    """The 32-bit key of (seed, step, rank), in Python: no tensor, no kernel."""
    key = 0
    for part in (seed, step, rank):
        key = mix32((key ^ (part & MASK32)) ^ mix32((part >> 32) & MASK32))
    return key


def step_key(device: torch.device, seed: int, step: int, rank: int) -> torch.Tensor:
    """The key of one training step as a 0-d int64 tensor on `device`. On CUDA it travels by a pinned,
    asynchronous copy (a pageable one would wait for the queue); it is the step's only host-to-device transfer
    besides the batch."""
    key = torch.tensor([key_of(seed, step, rank)], dtype=torch.int64)
    if device.type == "cuda":
        key = key.pin_memory()
    return key.to(device, non_blocking=True).view(())


def as_key(source: torch.Tensor | torch.Generator | int, device: torch.device | None = None) -> torch.Tensor:
    """A key tensor from a key tensor, a seeded `torch.Generator` (its seed and device) or an int (on `device`)."""
    if isinstance(source, torch.Tensor):
        return source
    if isinstance(source, torch.Generator):
        return torch.tensor(mix32(source.initial_seed() & MASK32), dtype=torch.int64, device=source.device)
    return torch.tensor(mix32(int(source) & MASK32), dtype=torch.int64, device=device)


class CounterRandom:
    """Draws from one key: each call takes the next stream, so a fixed sequence of calls is a fixed sequence of
    numbers. Build one inside the function that uses the numbers (it holds no state across calls of that function)."""

    def __init__(self, key: torch.Tensor):
        self.key, self.device, self._stream = key, key.device, 0

    def bits(self, *shape: int) -> torch.Tensor:
        """Uniform int64 in [0, 2^32) of `shape`."""
        self._stream += 1
        stream_key = mix32((self.key ^ ((self._stream * _GOLDEN) & MASK32)) & MASK32)
        i = torch.arange(math.prod(shape), device=self.device, dtype=torch.int64).view(shape)
        return mix32(mix32((i & MASK32) ^ stream_key) ^ (i >> 32) ^ (stream_key >> 3))

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform float32 in [0, 1), 24 random bits each."""
        return (self.bits(*shape) >> 8).float() * (1.0 / (1 << 24))

    def randint(self, high: int, *shape: int) -> torch.Tensor:
        """Uniform int64 in [0, high] (inclusive; `high` a Python int below 2^24)."""
        return (self.rand(*shape) * (high + 1)).long().clamp_max(high)

    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal float32 (Box–Muller on two uniform draws; 1 − u keeps the logarithm finite)."""
        radius = torch.sqrt(-2.0 * torch.log1p(-self.rand(*shape)))
        return radius * torch.cos((2 * math.pi) * self.rand(*shape))

    def ranking_keys(self, rows: int, n: int) -> torch.Tensor:
        """[rows, n] int64, distinct within a row (random bits above the column index): sorting a row is a
        uniformly random permutation without ties, so eager and compiled sorts agree."""
        column = torch.arange(n, device=self.device, dtype=torch.int64)
        return (self.bits(rows, n) << 20) | column
