"""voxfm: pretrain 3D medical-imaging foundation models (CT, MR, PET) from scratch, export them to MONAI and nnU-Net.

The repository's root folder is the package `voxfm`: `pretrain/ models/ data/ conf/` install and import as
`voxfm.pretrain`, `voxfm.models`, `voxfm.data`, `voxfm.conf` (pyproject.toml maps `voxfm` to this folder), so
nothing of voxfm shadows a user's own `models` or `data` package.

The Python API; it and the `voxfm` command are thin layers over the same code (README, "Python API"):

    voxfm.compose(command, overrides)   the checked config of a command, as the CLI composes it
    voxfm.build_module(cfg)             the LightningModule of a pretrain config, for your own Trainer
    voxfm.build_loader(cfg)             the data loader of a pretrain config (batches of regions)
    voxfm.shard(*overrides)             `voxfm shard ...`: volumes into shards, returns the report
    voxfm.pretrain(*overrides)          `voxfm pretrain ...`: trains (resumes a run_dir), returns the run_dir
    voxfm.export(checkpoint, output)    `voxfm export ...`: writes an export folder, returns it
    voxfm.load_backbone(export_dir)     an export's network with its weights and preprocessing description

Importing voxfm loads nothing heavy: each name is imported on first use.
"""

__version__ = "0.1.0"

_API = ("compose", "build_module", "build_loader", "shard", "export", "load_backbone", "Backbone")
__all__ = ["__version__", "pretrain", *_API]


def __getattr__(name: str):
    if name in _API:
        from voxfm.pretrain import api

        return getattr(api, name)
    if name in ("pretrain", "models", "data", "conf"):  # `voxfm.pretrain(...)` without importing it first
        import importlib

        return importlib.import_module(f"voxfm.{name}")
    raise AttributeError(f"module 'voxfm' has no attribute {name!r}")
