"""Training a pretraining run: the Lightning module, strategy, schedule, checkpoints, speed-ups applied from outside.
Assembled into a run by `pretrain/launch/`; imports none of callbacks/, bench/ or launch/."""
