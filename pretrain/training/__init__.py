"""A pretraining run: Lightning module, trainer and strategy, schedule, checkpoints, speed-ups from outside."""
