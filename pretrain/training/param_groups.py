"""The optimiser's parameter groups: weight decay or not, layer-wise learning-rate decay (BEiT, DINOv2) and DINO's
last layer, held still for the first steps. Only as many groups as the options need: with all of them off, the
two groups every run had before (decay, no decay), in that order, so such runs and their checkpoints are unchanged.

Layer ids (`optim.layer_decay`), from the backbone's `repeated_blocks()` — L blocks:
- a parameter inside `repeated_blocks()[i]` → i + 1;
- Primus's register tokens (its class token in self-distillation) → 0, though registered after its blocks;
- any other backbone parameter by its place in `backbone.named_parameters()` (registration order): before the first
  block's parameters → 0 (patch embedding, position embedding, class token); after the last block's
  → L + 1 (final norm, a decoder registered after the blocks); between two blocks → the id of the block before it;
- every parameter outside the backbone (objective heads, mask tokens, projectors) → L + 1.
The learning rate of layer id k is multiplied by `layer_decay ** (L + 1 - k)`: the output side learns at the full
rate, the input side slowest.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

LAST_LAYER = "last_layer"  # DINO heads' weight-normalised prototype layer (pretrain/objectives/dino/heads.py)


NO_DECAY_NAMES = ("mask_token", "cls_token")  # learned tokens of 2+ dims (a class token is [1, 1, hidden])


def decays(name: str, p: nn.Parameter) -> bool:
    """Weight decay on matrices and kernels; none on norms, biases, tokens and embeddings (ndim < 2), mask tokens or
    the class token, as in MAE and DINOv2. (Position tables and register tokens of 3 dims keep the decay they
    always had here: a change would break the resume of runs whose optimiser state has those groups.)"""
    return not (p.ndim < 2 or any(token in name for token in NO_DECAY_NAMES))


INPUT_SIDE = ("register_tokens",)  # tokens that enter with the patches: layer 0 wherever they are registered


def layer_ids(backbone: nn.Module) -> tuple[dict[int, int], int]:
    """→ ({id(parameter): layer id} for every backbone parameter, L) by the rule in this module's docstring."""
    blocks = backbone.repeated_blocks()
    depth = len(blocks)
    in_block = {id(p): i + 1 for i, block in enumerate(blocks) for p in block.parameters()}
    ids, latest = {}, 0  # latest: the id of the last block whose parameters came before
    for name, p in backbone.named_parameters():
        if name.startswith(INPUT_SIDE):
            ids[id(p)] = 0
        elif id(p) in in_block:
            latest = ids[id(p)] = in_block[id(p)]
        else:
            ids[id(p)] = latest if latest < depth else depth + 1
    return ids, depth


@dataclass
class Group:
    """One optimiser group: `lr_mult` scales the optimiser's (lr_scale'd) lr; `last_layer` groups get lr 0 for the
    first `freeze_last_layer_steps` steps."""

    params: list[nn.Parameter]
    decay: bool
    lr_mult: float = 1.0
    last_layer: bool = False

    def optimizer_group(self) -> dict:
        return {"params": self.params} if self.decay else {"params": self.params, "weight_decay": 0.0}


def param_groups(
    named: list[tuple[str, nn.Parameter]],
    backbone: nn.Module,
    layer_decay: float = 1.0,
    freeze_last_layer: bool = False,
    more: list[nn.Module] = (),
) -> list[Group]:
    """named: the trainable (name, parameter) pairs of the whole module, backbone included. Groups ordered by (last
    layer apart, layer id, decay before no decay); with an option on, empty groups are left out. `more`: other
    backbones inside the module (distillation's other students), layer-decayed like `backbone`: the same depth."""
    if not 0.0 < layer_decay <= 1.0:
        raise ValueError(f"layer_decay={layer_decay}: expected 0 < layer_decay <= 1 (1 = off)")
    ids, depth = layer_ids(backbone) if layer_decay != 1.0 else ({}, 0)
    for other in more if layer_decay != 1.0 else ():
        their_ids, their_depth = layer_ids(other)
        if their_depth != depth:
            raise ValueError(
                f"layer_decay={layer_decay}: the students have {depth} and {their_depth} blocks; layer-wise decay "
                "needs one depth for all (or optim.layer_decay=1)"
            )
        ids |= their_ids
    # the two full-rate groups always exist: with every option off they are the only ones, as before
    groups = {(False, depth + 1, False): Group([], decay=True), (False, depth + 1, True): Group([], decay=False)}
    for name, p in named:
        layer = ids.get(id(p), depth + 1)
        last = freeze_last_layer and LAST_LAYER in name
        key = (last, layer, not decays(name, p))
        if key not in groups:
            groups[key] = Group([], decay=not key[2], lr_mult=layer_decay ** (depth + 1 - layer), last_layer=last)
        groups[key].params.append(p)
    plain = layer_decay == 1.0 and not freeze_last_layer
    return [group for _, group in sorted(groups.items()) if group.params or plain]
