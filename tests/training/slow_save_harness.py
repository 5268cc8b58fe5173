"""Runs `voxfm` with checkpoint writes to a path containing $VOXFM_TEST_SLOW_SAVE stalled halfway (a partial
`.tmp` on disk, then a long sleep), so a test can SIGKILL the run in the middle of writing a checkpoint. The stall
is in `torch.save`, which `AtomicCheckpointIO` hands the open `<name>.tmp` file it streams into."""

import os
import sys
import time
from pathlib import Path

import torch

import voxfm.pretrain.training.checkpoint_io as checkpoint_io
from voxfm.pretrain.cli.main import main

new_temp, save, writing = checkpoint_io.new_temp, torch.save, []


def recording(path):
    writing.append(Path(path))
    return new_temp(path)


def stalled(obj, f, *args, **kwargs):
    if writing and os.environ.get("VOXFM_TEST_SLOW_SAVE", "\0") in writing[-1].name:
        f.write(b"half a checkpoint")
        f.flush()
        time.sleep(600)
    return save(obj, f, *args, **kwargs)


checkpoint_io.new_temp = recording
checkpoint_io.torch.save = stalled
sys.exit(main(sys.argv[1:]))
