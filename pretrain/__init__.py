"""Objectives, the LightningModule, checkpoint/resume, export, fine-tuning and the `voxfm` CLI.

The package is also the API call `voxfm.pretrain(*overrides)` (the `voxfm pretrain` command): calling it runs
`voxfm.pretrain.api.pretrain`, so the package and the function share the name the README documents."""

import sys
import types


class _CallablePackage(types.ModuleType):
    def __call__(self, *overrides: str, **keys):
        from voxfm.pretrain.api import pretrain

        return pretrain(*overrides, **keys)


sys.modules[__name__].__class__ = _CallablePackage
