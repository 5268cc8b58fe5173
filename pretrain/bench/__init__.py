"""`voxfm bench`: data, ingest, model and attention benchmarks, all timed by `pretrain/runtime/timing.py`."""
