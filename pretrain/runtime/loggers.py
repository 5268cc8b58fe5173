"""The loggers beside the CSV metrics (`metrics_csv.py`), each keeping one record per run_dir across resumes.

W&B: one run per run_dir, however often it is resumed (every requeue of a preempted cluster job): its id is kept
in `run_dir/wandb_id`, written once, and the run is named after the run_dir unless `logger.wandb.name` says
otherwise. TensorBoard: event files in run_dir/tensorboard/."""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

from lightning.pytorch.loggers import WandbLogger

from voxfm.pretrain.runtime.shareable import shareable_config

ID_FILE = "wandb_id"


def run_id(run_dir: Path) -> str:
    """This run_dir's W&B id: read, or made by the first process to get here (O_EXCL: one writer among ranks)."""
    path = run_dir / ID_FILE
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    except FileExistsError:
        for _ in range(50):  # another rank created it a moment ago and is writing it
            text = path.read_text().strip()
            if text:
                return text
            time.sleep(0.1)
        raise ValueError(f"{path} is empty: delete it (the next run starts a new W&B run)") from None
    new = secrets.token_hex(4)  # 8 lowercase hex digits, as W&B's own ids look
    with os.fdopen(fd, "w") as f:
        f.write(new + "\n")
    return new


def wandb_logger(run_dir: Path, config: dict, settings: dict) -> WandbLogger:
    """W&B gets the run's metrics and its config with every path reduced to its last component; no command line,
    host, git state or code (`x_disable_meta`, `disable_git`, `save_code=False`), and no picture of the data
    unless `logger.wandb.log_images=true` (the README's "Trust and sharing" lists it)."""
    import wandb

    settings = {k: v for k, v in settings.items() if k != "log_images"}
    settings["name"] = settings.get("name") or Path(run_dir).resolve().name
    private = wandb.Settings(x_disable_meta=True, disable_git=True, save_code=False)
    logger = WandbLogger(
        save_dir=str(run_dir),
        config=shareable_config(config),
        id=run_id(Path(run_dir)),
        resume="allow",
        settings=private,
        **settings,
    )
    logger._wandb_init.pop("anonymous", None)  # Lightning passes anonymous=None, which wandb warns is deprecated
    return logger


def finish_wandb(trainer) -> None:
    """End this process's W&B run with the fit (the next `voxfm.pretrain` call, another run_dir, gets its own)."""
    if any(isinstance(logger, WandbLogger) for logger in trainer.loggers) and trainer.is_global_zero:
        import wandb

        if wandb.run is not None:
            wandb.finish()


def tensorboard_logger(run_dir: Path):
    """TensorBoard event files in run_dir/tensorboard/ (one folder for the run_dir: a resume appends a new event
    file beside the others, and TensorBoard reads them as one run)."""
    from lightning.pytorch.loggers import TensorBoardLogger

    return TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)
