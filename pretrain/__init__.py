"""Objectives, the LightningModule, checkpoint/resume, export and the `voxfm` CLI."""
