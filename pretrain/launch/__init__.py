"""Launching a pretraining run: the composition root that builds the module, trainer, callbacks and data from the
config and starts the fit. Its own package above training/ and callbacks/ (it imports both; neither imports it), so
the pieces it assembles never reach back up. Named `launch`: `run` already names each program's entry module
(`export/run.py`, `finetune/run.py`, and `launch/run.py` here)."""
