"""Learning-rate schedules as pure functions of the optimiser step."""

from __future__ import annotations

import math


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> float:
    """Multiplier of the base learning rate: linear 0 → 1 over `warmup_steps`, then cosine to `min_factor`
    at `total_steps` (and held there after)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_scale(rule: str, global_batch: int, reference_batch: int) -> float:
    """Learning-rate multiplier for a global batch (samples per optimiser step over all ranks):
    `linear` (Goyal et al. 2017), `sqrt` (Krizhevsky 2014; Adam-family optimisers), or `none`."""
    ratio = global_batch / reference_batch
    factors = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}
    if rule not in factors:
        raise ValueError(f"optim.lr_scaling={rule!r}; allowed: {', '.join(factors)}")
    return factors[rule]
