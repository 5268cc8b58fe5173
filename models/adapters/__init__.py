"""What each backbone family brings besides its network, in one module per family: its export formats and their
weights, nnU-Net's axis order and nnssl's keys, the fine-tuning segmenter, the model card's notes. A backbone class
names its adapter (`adapter = ViTAdapter`); export, fine-tuning and the model card call it and compare no
architecture name. The contracts are `voxfm.models.protocols`. Shape rules are torch-free, in `models/rules.py`,
named by each backbone's declaration."""
