"""A network that a stored file describes is sized before it is built. A 4 KB edit of `backbone.json`'s kwargs, or
of the model config stored in a checkpoint, can ask for a network of a hundred gigabytes: it is first built on
PyTorch's meta device (shapes only, no memory), its parameters counted against `MAX_PARAMETERS`, and its weights'
shapes compared with the tensors the file really holds. Only then is it built for real.

A checkpoint file is a zip archive; `torch.save` stores its records uncompressed, and `torch.load` would inflate a
DEFLATE-compressed record of a crafted file (2.6 MB → 1 GiB): such records are refused before loading.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import torch

from voxfm.pretrain.errors import ConfigError

MAX_PARAMETERS = 4_000_000_000  # 16 GB of fp32 weights: 4x the largest 3D backbone published; raise it here


COUNTS = ("layers", "depth", "blocks", "heads", "stages")  # argument names that count repeated modules
MAX_COUNT, MAX_NUMBER, MAX_LIST = 1024, 1_000_000, 64


def check_arguments(kwargs: dict, where: str) -> None:
    """Before anything is built, even on the meta device (building 200,000 blocks takes minutes and gigabytes of
    Python objects): a count of repeated modules above `MAX_COUNT`, any number above `MAX_NUMBER` and any list
    longer than `MAX_LIST` are refused."""

    def numbers(value):
        if isinstance(value, list):
            if len(value) > MAX_LIST:
                raise ConfigError(f"{where}: a list of {len(value)} values (at most {MAX_LIST})")
            for v in value:
                yield from numbers(v)
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            yield value

    for key, value in kwargs.items():
        limit = MAX_COUNT if any(word in str(key).lower() for word in COUNTS) else MAX_NUMBER
        for number in numbers(value):
            if abs(number) > limit:
                raise ConfigError(f"{where}.{key}={number}: refused before building (at most {limit:,})")


def sized(build: Callable[[], torch.nn.Module], where: str) -> torch.nn.Module:
    """`build()` on the meta device, refused when it cannot be built or holds more than `MAX_PARAMETERS`."""
    try:
        with torch.device("meta"):
            net = build()
    except (TypeError, ValueError, KeyError, RuntimeError, AssertionError, OverflowError, MemoryError) as err:
        raise ConfigError(f"{where}: the network it describes cannot be built ({type(err).__name__}: {err})") from None
    count = sum(p.numel() for p in net.parameters())
    if count > MAX_PARAMETERS:
        raise ConfigError(
            f"{where}: describes a network of {count / 1e9:.1f} G parameters (voxfm builds at most "
            f"{MAX_PARAMETERS / 1e9:.0f} G); refused before building it"
        )
    return net


def check_shapes(net: torch.nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """The weights a file holds must be exactly the tensors of the network its description builds."""
    expected = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in weights.items()}
    missing, extra = sorted(expected.keys() - given.keys()), sorted(given.keys() - expected.keys())
    wrong = [f"{k}: {given[k]} (described: {expected[k]})" for k in sorted(expected.keys() & given.keys())
             if given[k] != expected[k]]  # fmt: skip
    if missing or extra or wrong:
        parts = [f"missing {missing[:3]}" if missing else "", f"unexpected {extra[:3]}" if extra else "", *wrong[:3]]
        raise ConfigError(
            f"{where}: the weights do not match the network described beside them: " + "; ".join(p for p in parts if p)
        )


def check_stored_records(path: str | Path) -> None:
    """A checkpoint file whose zip records are compressed (torch.save never compresses) is refused unread."""
    path = Path(path)
    if not zipfile.is_zipfile(path):
        return  # torch.load says what it is
    with zipfile.ZipFile(path) as archive:
        packed = [i.filename for i in archive.infolist() if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise ConfigError(
            f"{path}: holds compressed records ({', '.join(packed[:3])}), which torch.save never writes; "
            "refused unread (a small compressed file can inflate to gigabytes)"
        )
