"""Loading weights with a useful failure: every missing, unexpected and shape-mismatched key, not the first."""

from __future__ import annotations

import torch


def load_report(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> dict[str, list[str]]:
    own = model.state_dict()
    return {
        "missing": sorted(k for k in own if k not in state),
        "unexpected": sorted(k for k in state if k not in own),
        "shape_mismatch": sorted(
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
            for k in own
            if k in state and tuple(state[k].shape) != tuple(own[k].shape)
        ),
    }


def load_strict(model: torch.nn.Module, state: dict[str, torch.Tensor], what: str) -> None:
    """`model.load_state_dict(state, strict=True)`, or a ValueError naming what does not fit."""
    report = load_report(model, state)
    if any(report.values()):
        lines = [f"{what} does not fit {type(model).__name__}:"]
        for kind, keys in report.items():
            if keys:
                shown = ", ".join(keys[:8]) + (f" … ({len(keys)} in all)" if len(keys) > 8 else "")
                lines.append(f"  {kind.replace('_', '-')} keys ({len(keys)}): {shown}")
        raise ValueError("\n".join(lines))
    model.load_state_dict(state, strict=True)
