"""Random numbers as a pure function of a key tensor, so the views draw them inside their compiled graph.

A compiled graph takes no `torch.Generator`, and an eager draw is a kernel of its own before the graph (plus the
passes that apply it). Here every number is a hash of (key, stream, element index) in int64 tensor ops (SplitMix's
construction): the key is a [STREAMS] int64 tensor on the training device, one key per draw (`step_key`: a function
of (seed, step, rank), hashed on the host, so views replay exactly after a resume), each draw takes the next one, and
the element index is an `arange`.
Inside a compiled graph the hash fuses into the kernels that use it: Gaussian noise over a whole batch of views
costs no memory traffic.

The mixer is a 32-bit integer hash (xor-shift, multiply by 0x45D9F3B, twice): products stay below 2^60, so int64
arithmetic never overflows and eager, compiled, CPU and CUDA give the same bits.
"""

from __future__ import annotations

import math

import torch

MASK32 = 0xFFFFFFFF
_MULTIPLIER = 0x45D9F3B
_GOLDEN = 0x9E3779B9  # the stream stride: distinct streams start far apart in the hash's input
_WEYL = 0x61C88647  # 2^32 − _GOLDEN: odd, below 2^31, so index × _WEYL stays below 2^63


def mix32(x):
    """A 32-bit integer hash of x in [0, 2^32): Python ints and int64 tensors alike."""
    x = ((x ^ (x >> 16)) * _MULTIPLIER) & MASK32
    x = ((x ^ (x >> 16)) * _MULTIPLIER) & MASK32
    return x ^ (x >> 16)


STREAMS = 32  # draws per key: a view pipeline makes 6 (one view) to 12 (multi-crop with block masks)


def key_of(seed: int, step: int, rank: int) -> int:
    """The 32-bit key of (seed, step, rank), in Python: no tensor, no kernel."""
    key = 0
    for part in (seed, step, rank):
        key = mix32((key ^ (part & MASK32)) ^ mix32((part >> 32) & MASK32))
    return key


def stream_keys(key: int) -> list[int]:
    """The `STREAMS` keys of the draws made from one key, hashed on the host: inside the graph a draw only indexes
    its own (a hash of the key there would be expanded into every use of every draw)."""
    return [mix32(key ^ ((stream * _GOLDEN) & MASK32)) for stream in range(1, STREAMS + 1)]


def step_key(device: torch.device, seed: int, step: int, rank: int) -> torch.Tensor:
    """The key of one training step on `device`: [STREAMS] int64, one key per draw. On CUDA it travels by a pinned,
    asynchronous copy (a pageable one would wait for the queue); it is the step's only host-to-device transfer
    besides the batch."""
    key = torch.tensor(stream_keys(key_of(seed, step, rank)), dtype=torch.int64)
    if device.type == "cuda":
        key = key.pin_memory()
    return key.to(device, non_blocking=True)


def as_key(source: torch.Tensor | torch.Generator | int, device: torch.device | None = None) -> torch.Tensor:
    """A key tensor from a key tensor, a seeded `torch.Generator` (its seed and device) or an int (on `device`)."""
    if isinstance(source, torch.Tensor):
        return source
    if isinstance(source, torch.Generator):
        source, device = source.initial_seed(), source.device
    return torch.tensor(stream_keys(mix32(int(source) & MASK32)), dtype=torch.int64, device=device)


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
        if key.shape != (STREAMS,):
            raise ValueError(f"a key is [{STREAMS}] int64 (`step_key`, `as_key`); got shape {list(key.shape)}")

    def bits(self, *shape: int) -> torch.Tensor:
        """Uniform int64 in [0, 2^32) of `shape`: SplitMix's construction in 32 bits, the hash of a Weyl sequence
        (index × an odd golden-ratio constant + the stream's key). One hash per element keeps the compiled graph's
        expression small: inductor expands every use of an intermediate, and nested hashes multiply. The index
        wraps at 2^32 elements per draw."""
        if self._stream == STREAMS:
            raise RuntimeError(f"more than {STREAMS} draws from one key: raise counter_random.STREAMS")
        stream_key = self.key[self._stream]
        self._stream += 1
        i = torch.arange(math.prod(shape), device=self.device, dtype=torch.int64).view(shape)
        return mix32((((i & MASK32) * _WEYL) + stream_key) & MASK32)

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
        column = torch.arange(n, device=self.device, dtype=torch.int64)
        return (self.bits(rows, n) << 20) | column
