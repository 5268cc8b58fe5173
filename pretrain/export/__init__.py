"""`voxfm export`: a checkpoint → weights that load into MONAI or nnU-Net without voxfm, with a model card."""
