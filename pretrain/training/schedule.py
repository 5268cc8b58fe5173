"""Learning-rate and weight-decay schedules as pure functions of the optimiser step: a resumed run sets the values
the uninterrupted one did at the same step."""

from __future__ import annotations

import math
from collections.abc import Callable


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> float:
    """Multiplier of the base learning rate: linear 0 → 1 over `warmup_steps`, then cosine to `min_factor`
    at `total_steps` (and held there after)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(total_steps - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def held_until(step: int, schedule: Callable[[int], float], start: int) -> float:
    """0 for the first `start` steps, then `schedule(step)`: a parameter group that stays still at first (DINO's
    last layer, `optim.freeze_last_layer_steps`). AdamW at lr 0 moves neither the weights nor their decay."""
    return 0.0 if step < start else schedule(step)


def cosine(step: int, start: float, end: float, total_steps: int) -> float:
    """`start` at step 0 → `end` at `total_steps` along a half cosine, held after (DINOv2's weight-decay schedule,
    `optim.weight_decay_end`)."""
    progress = min(step / max(total_steps, 1), 1.0)
    return end + (start - end) * 0.5 * (1.0 + math.cos(math.pi * progress))


def lr_scale(rule: str, global_batch: int, reference_batch: int) -> float:
    """Learning-rate multiplier for a global batch (samples per optimiser step over all ranks):
    `linear` (Goyal et al. 2017), `sqrt` (Krizhevsky 2014; Adam-family optimisers), or `none`."""
    ratio = global_batch / reference_batch
    factors = {"none": 1.0, "linear": ratio, "sqrt": math.sqrt(ratio)}
    if rule not in factors:
        raise ValueError(f"optim.lr_scaling={rule!r}; allowed: {', '.join(factors)}")
    return factors[rule]
