"""The device pool's state in every checkpoint, so a resumed run draws exactly the batches the uninterrupted one would.

Each batch from the device pool (data/stream/device_pool.py) carries the state that rebuilds the pool after it.
`FeedState` keeps the last trained batch's and writes every rank's into the checkpoint as `voxfm_feed` (gathered:
every rank saves a checkpoint at the same step). `saved_feed` reads it back for the ranks of a resumed run, or says
why it cannot (another world size or worker count, a checkpoint without it, a damaged record): that run then draws
fresh batches, seeded by the resume step, as the host path always does.
"""

from __future__ import annotations

import logging

import lightning as L
import torch

from voxfm.data.stream.pool_state import state_problem

log = logging.getLogger("voxfm")
KEY = "voxfm_feed"


class FeedState(L.Callback):
    def __init__(self):
        self.state: dict | None = None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if isinstance(batch, dict) and batch.get("_feed_state") is not None:
            self.state = batch["_feed_state"]

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        states = [self.state]
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            states = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(states, self.state)
        if any(s is not None for s in states):
            checkpoint[KEY] = {"states": states}


def saved_feed(
    record, world_size: int, num_workers: int, signature: str, n_sources: int, resampled: bool, max_reread: int
) -> tuple[dict[int, dict] | None, str]:
    """(rank → saved device-pool state, "") when a checkpoint's `voxfm_feed` record is one this run can replay (its
    stream then takes the saved seed), else (None, why not): every rank's state is checked in full first
    (data/stream/pool_state.py `state_problem`)."""
    if record is None:
        return None, "the checkpoint holds no device-pool state (saved by the host path or an older voxfm)"
    states = record.get("states") if isinstance(record, dict) else None
    if not isinstance(states, list) or len(states) != world_size:
        have = len(states) if isinstance(states, list) else "no"
        return None, f"the checkpoint holds {have} rank state(s) of the device pool, this run has {world_size} rank(s)"
    workers = max(num_workers, 1)
    for rank, state in enumerate(states):
        if problem := state_problem(state, workers, signature, n_sources, resampled, max_reread):
            return None, f"rank {rank}'s device-pool state: {problem}"
    if len({state["seed"] for state in states}) != 1:
        return None, "its ranks' device-pool states disagree on the seed"
    return dict(enumerate(states)), ""
