"""nnU-Net's own Primus (dynamic_network_architectures 0.4.4, through timm 1.0.22), for tests only.

timm imports torchvision for image transforms and a frozen batch norm that Primus never uses, and the torchvision
that matches a CUDA torch cannot be installed beside the CPU torch. `reference_primus()` serves empty `torchvision`
modules while timm is imported, so the reference builds and runs here. Never in the package.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import sys
import types

import pytest


class _Stub(type):
    """A stand-in class whose attributes are their names (e.g. `InterpolationMode.NEAREST`)."""

    def __getattr__(cls, name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        return f"{cls.__name__}.{name}"


class _EmptyTorchvision(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        module = types.ModuleType(spec.name)
        module.__path__ = []

        def attribute(name: str):
            if name.startswith("__"):
                raise AttributeError(name)
            return _Stub(name, (), {}) if name[:1].isupper() else (lambda *args, **kwargs: None)

        module.__getattr__ = attribute
        return module

    def exec_module(self, module):
        pass


def reference_primus():
    """nnU-Net's `Primus` class; the test is skipped when timm or dynamic-network-architectures is missing."""
    pytest.importorskip("dynamic_network_architectures")
    pytest.importorskip("einops")
    if "timm" not in sys.modules:
        import importlib.util

        if importlib.util.find_spec("timm") is None:
            pytest.skip("timm==1.0.22 is not installed (make install adds it with --no-deps)")
        finder = _EmptyTorchvision()
        sys.meta_path.insert(0, finder)
        try:
            import timm.layers  # noqa: F401
            import timm.models.eva  # noqa: F401
        finally:
            sys.meta_path.remove(finder)
    from dynamic_network_architectures.architectures.primus import Primus

    return Primus
