"""Lightning callbacks of a pretraining run: checkpointing, preemption, monitoring, pictures, probe, teardown."""
