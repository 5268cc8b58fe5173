"""The device-side stage: view pipelines (crops, flips, rotations, normalisation), multi-crop, random and
block masks, intensity augmentation, as plain torch functions of (batch, generator)."""
