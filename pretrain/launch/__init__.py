"""Launching a run: the composition roots that build the module, trainer, callbacks and data from the config and
start the fit, for pretraining (`run.py`) and fine-tuning (`finetune.py`). Their own package above training/,
callbacks/ and finetune/ (it imports them; none imports it), so the pieces it assembles never reach back up."""
