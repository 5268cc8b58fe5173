"""The device-side stage: view pipelines (crops, flips, rotations, normalisation), multi-crop, random and
block masks, intensity augmentation, as plain torch functions of (batch, the step's key): random numbers
included (`counter_random.py`), so a compiled step runs no eager kernel."""
