"""Which steps read tensor values: only logging steps do (`trainer.log_every_n_steps`), so that every other step
runs without a host sync. One rule, shared by the module, the objectives' optional figures and the callbacks."""

from __future__ import annotations


def is_logging_step(trainer, batch_idx: int | None = None) -> bool:
    """True when Lightning writes this step's logged metrics: the same test its logger connector applies
    (`(batches stepped + 1) % log_every_n_steps == 0`, or the run is stopping), valid from `on_train_batch_start`
    to `on_train_batch_end` of the step. With batch_idx, only the last micro-batch of an accumulated step counts
    (callbacks that reset their figures at a logging step must do it once per step)."""
    every = trainer.log_every_n_steps
    stepped = trainer.fit_loop.epoch_loop._batches_that_stepped
    if batch_idx is not None and (batch_idx + 1) % trainer.accumulate_grad_batches:
        return False
    return bool(every) and ((stepped + 1) % every == 0 or trainer.should_stop)
