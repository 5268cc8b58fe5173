"""Runs `voxfm` with checkpoint writes to a path containing $VOXFM_TEST_SLOW_SAVE stalled halfway (a partial
`.tmp` on disk, then a long sleep), so a test can SIGKILL the run in the middle of writing a checkpoint."""

import os
import sys
import time

from lightning.pytorch.plugins.io import TorchCheckpointIO

from voxfm.pretrain.cli.main import main

original = TorchCheckpointIO.save_checkpoint


def stalled(self, checkpoint, path, storage_options=None):
    if os.environ.get("VOXFM_TEST_SLOW_SAVE", "\0") in str(path):
        with open(path, "wb") as f:
            f.write(b"half a checkpoint")
            f.flush()
        time.sleep(600)
    return original(self, checkpoint, path, storage_options)


TorchCheckpointIO.save_checkpoint = stalled
sys.exit(main(sys.argv[1:]))
