"""Primus's adapters: exported with nnU-Net's own parameter names (dynamic_network_architectures' `Primus`),
nnU-Net's axis order (kernels, position embeddings and RoPE blocks) and nnssl's plan and keys; fine-tuned as the
whole Primus with a new patch decoder, as nnU-Net's pretrained trainer does."""

from __future__ import annotations

import torch

from voxfm.models.adapters.common import clone_state, inflate, keep_heads, transpose_kernels
from voxfm.models.weights import load_strict

MONAI_NOTE = (
    "MONAI (1.6.1) has no Primus and no network with EVA blocks and 3D RoPE that these weights could load "
    "into: the supported routes are nnU-Net (`format=nnssl`), `dynamic_network_architectures`' Primus (same "
    "parameter names), and `voxfm finetune`."
)
NOT_A_PRESET = (
    "nnU-Net's pretrained trainers build only the Primus presets (PrimusS/B/M/L: patch 8, no register "
    "tokens) by name; this Primus is given as its class and arguments, which nnU-Net's "
    "`get_network_from_plans` builds but `nnUNetv2_train_pretrained` refuses without a trainer of your own "
    "(and its loader copies `down_projection` and `eva`, not register tokens). To fine-tune with "
    "`nnUNetv2_train_pretrained`, pretrain a preset: `model=primus_m` is PrimusM."
)


def nnssl_presets() -> dict[str, dict]:
    """ "PrimusS/B/M/L" as nnU-Net's get_network_from_name builds them (patch 8, nnssl's init_values=0.1 and inner
    attention norm; the input shape is the downstream patch size); drop rates change no weight: not compared."""
    from voxfm.models.primus import PRESETS

    return {
        f"Primus{size}": {
            "embed_dim": dim,
            "eva_depth": depth,
            "eva_numheads": heads,
            "patch_embed_size": [8, 8, 8],
            "num_register_tokens": 0,
            "use_rot_pos_emb": True,
            "use_abs_pos_embed": True,
            "mlp_ratio": 4 * 2 / 3,
            "scale_attn_inner": True,
        }
        for size, (depth, heads, dim) in PRESETS.items()
    }


class PrimusAdapter:
    architecture = "primus"
    nnssl_keys = {
        "key_to_encoder": "eva",
        "key_to_stem": "down_projection",
        "keys_to_in_proj": ["down_projection.proj"],
        "key_to_lpe": "eva.pos_embed",
    }
    nnssl_trainer = " -tr PretrainedTrainer_Primus"

    @staticmethod
    def export_weights(state: dict[str, torch.Tensor], backbone, in_channels: int | None) -> tuple[dict, dict]:
        weights = clone_state(state)
        kwargs = dict(backbone.kwargs)
        inflate(weights, ["down_projection.proj.weight"], kwargs, "input_channels", in_channels)
        return weights, {
            "architecture": "primus",
            "class": backbone.declaration.export_class,
            "kwargs": kwargs,
            "kwargs_requires_import": [],
        }

    @staticmethod
    def nnunet_axes(weights: dict[str, torch.Tensor], kwargs: dict) -> tuple[dict, dict]:
        """Kernels transposed and patch_embed_size / input_shape reversed; the position embeddings of the patches
        (after any register tokens) moved from raster order over voxfm's grid (X, Y, Z) to raster order over
        (Z, Y, X); and, because 3D axial RoPE turns each head's q and k in three equal blocks, one per grid axis,
        axis 0 first (`models.eva.axial_rope`), the first and last block of every head's q and k swapped: nnU-Net's
        axis 0 is voxfm's Z. Permuting q and k alike leaves q·k, hence attention, unchanged."""
        out = transpose_kernels(weights)
        grid = [s // p for s, p in zip(kwargs["input_shape"], kwargs["patch_embed_size"])]
        kwargs = dict(
            kwargs, patch_embed_size=kwargs["patch_embed_size"][::-1], input_shape=kwargs["input_shape"][::-1]
        )
        if "eva.pos_embed" in out:
            table, registers = out["eva.pos_embed"], kwargs["num_register_tokens"]
            patches = table[:, registers:].reshape(1, *grid, -1).permute(0, 3, 2, 1, 4).reshape(1, -1, table.shape[-1])
            out["eva.pos_embed"] = torch.cat([table[:, :registers], patches], dim=1).contiguous()
        if kwargs["use_rot_pos_emb"]:
            heads = kwargs["eva_numheads"]
            head = kwargs["embed_dim"] // heads
            block = head // 3  # 2 x the RoPE bands of one axis
            order = torch.cat([torch.arange(2 * block, head), torch.arange(block, 2 * block), torch.arange(block)])
            rows = (torch.arange(heads).unsqueeze(1) * head + order).flatten()
            for key in out:
                if key.endswith((".attn.q_proj.weight", ".attn.q_proj.bias", ".attn.k_proj.weight")):
                    out[key] = out[key][rows].contiguous()
        return out, kwargs

    @staticmethod
    def nnssl_plans(kwargs: dict) -> dict:
        """Its preset name (PrimusS/B/M/L) where the arguments are one, else nnU-Net's Primus class with its own."""
        from voxfm.models.primus import Primus

        own = {k: v for k, v in kwargs.items() if k not in ("input_channels", "num_classes")}
        for name, preset in nnssl_presets().items():
            if all(own[k] == v for k, v in preset.items()) and own["init_values"] is not None:  # LayerScale weights
                return {"arch_class_name": name, "arch_kwargs": None, "arch_kwargs_requiring_import": None}
        return {
            "arch_class_name": Primus.declaration.export_class,
            "arch_kwargs": own,
            "arch_kwargs_requiring_import": [],
        }

    @staticmethod
    def segmenter(kwargs: dict, n_classes: int, crop_size, unetr: dict) -> torch.nn.Module:
        """The whole network as nnU-Net fine-tunes it: the pretrained encoder, a new decoder."""
        from voxfm.models.primus import Primus

        if list(kwargs["input_shape"]) != list(crop_size):  # nnU-Net too fine-tunes at the pretraining shape
            raise ValueError(
                f"data.crop_size={list(crop_size)}: a Primus export fine-tunes at the input shape its "
                f"position embedding was learnt for, {list(kwargs['input_shape'])}"
            )
        return Primus(**{**kwargs, "num_classes": n_classes})

    @staticmethod
    def load_pretrained(net: torch.nn.Module, weights: dict[str, torch.Tensor], what: str) -> None:
        """Everything but PatchDecode, whose widths follow the class count (as nnU-Net's pretrained trainer takes
        only the tokeniser, the encoder and the position embedding)."""
        load_strict(net, keep_heads(net, weights, net.decoder_prefix), what)

    @staticmethod
    def encoder_parameters(net: torch.nn.Module) -> list[torch.nn.Parameter]:
        return list(net.encoder_parameters())

    @staticmethod
    def card_notes(meta: dict, export_format: str) -> list[str]:
        lines = []
        if export_format == "nnssl" and meta["nnssl_architecture"]["arch_class_name"] == meta["class"]:
            lines.append(NOT_A_PRESET)
        if meta["config"]["model"].get("num_register_tokens"):
            lines += [
                "",
                "## Class token",
                "The first register token served as the class token in pretraining; the "
                "register tokens are kept (`register_tokens`, as nnU-Net's Primus names them).",
            ]
        return lines + ["", "## MONAI", MONAI_NOTE]
