"""`voxfm finetune`: segmentation from an export (or from scratch); its train/evaluate loop serves the probe too."""
