"""`voxfm bench model experiment=<name>`: voxfm's full training step next to MONAI's reference at the same shapes.

One process, one precision (bf16 autocast on CUDA, fp32 on CPU). Both steps are forward + backward +
AdamW step; voxfm's includes its device stage (views, augmentation, masks). References: MONAI's
`MaskedAutoEncoderViT` with the same hidden-patch MSE for ViT objectives, `DynUNet` with residual blocks
(same widths, depth and strides) with a hidden-voxel MSE for CNN objectives. FLOPs are counted with
`FlopCounterMode` on one step; MFU is against a matmul ceiling measured on the spot.
"""

from __future__ import annotations

import contextlib
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from pretrain.efficiency import measured_peak_tflops
from pretrain.module import step_generator
from pretrain.objectives.mae import patchify
from pretrain.objectives.mim import cube_visibility
from pretrain.train import build_module


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, warmup: int, steps: int, device: torch.device) -> float:
    """Seconds per call, after `warmup` calls."""
    for _ in range(warmup):
        fn()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        fn()
    _sync(device)
    return (time.perf_counter() - start) / steps


def _flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def _regions(cfg, module, device: torch.device) -> dict:
    """A synthetic batch as the data loader delivers it (int16 regions, CT normalisation)."""
    size = cfg.data.region_size or module.stage.region_size_needed()
    b = cfg.data.batch_size
    g = torch.Generator().manual_seed(0)
    region = torch.randint(-1000, 1000, (b, 1, *size), generator=g, dtype=torch.int16)
    return {"region": region.to(device), "low": torch.full((b,), -1000.0, device=device),
            "high": torch.full((b,), 1000.0, device=device), "modality": ["CT"] * b}


def voxfm_step(cfg, device: torch.device, autocast):
    """→ (step function, views per step, the module)."""
    module = build_module(cfg).to(device)
    optimizer = module.configure_optimizers()["optimizer"]
    regions = _regions(cfg, module, device)

    def step():
        batch = module.stage(regions, step_generator(device, 0, 0, 0))
        with autocast():
            loss, _ = module.objective(batch, module.backbone)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def stage_only():
        module.stage(regions, step_generator(device, 0, 0, 0))

    step.stage_only = stage_only
    views = cfg.data.batch_size * module.stage.n_views
    return step, views, module


def _adamw(model: torch.nn.Module, cfg, device: torch.device) -> torch.optim.Optimizer:
    extra = {"fused": True} if device.type == "cuda" else {}
    return torch.optim.AdamW(model.parameters(), lr=float(cfg.optim.optimizer.lr), **extra)


def monai_mae_step(cfg, module, device: torch.device, autocast, views: int):
    from monai.networks.nets import MaskedAutoEncoderViT

    vit, stage = module.backbone, module.stage
    decoder = module.objective.mae.decoder if hasattr(module.objective, "mae") else module.objective.decoder
    model = MaskedAutoEncoderViT(
        in_channels=vit.in_channels, img_size=vit.img_size, patch_size=vit.patch_size, hidden_size=vit.hidden_size,
        mlp_dim=vit.mlp_dim, num_layers=vit.num_layers, num_heads=vit.num_heads,
        masking_ratio=stage.masking.mask_ratio, decoder_hidden_size=decoder.proj.out_features,
        decoder_mlp_dim=decoder.blocks[0].mlp.linear1.out_features, decoder_num_layers=len(decoder.blocks),
        decoder_num_heads=decoder.blocks[0].attn.num_heads, qkv_bias=vit.qkv_bias,
    ).to(device)
    x = torch.rand(views, vit.in_channels, *vit.img_size, device=device)
    note = ""
    try:  # MONAI 1.6.1's MAE mixes dtypes in an index_put under bf16 autocast
        with autocast():
            model(x[:1])
    except RuntimeError:
        model, x, autocast, note = model.to(torch.bfloat16), x.to(torch.bfloat16), contextlib.nullcontext, \
            "bf16 weights: MONAI's MAE fails under autocast"
    optimizer = _adamw(model, cfg, device)

    def step():
        with autocast():
            pred, mask = model(x)
            target = patchify(x.float(), vit.patch_size)
            target = (target - target.mean(-1, keepdim=True)) / (target.var(-1, keepdim=True) + 1e-6).sqrt()
            loss = ((pred.float() - target).pow(2).mean(-1) * mask).sum() / mask.sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, "MONAI MaskedAutoEncoderViT", note


def monai_dynunet_step(cfg, module, device: torch.device, autocast, views: int):
    from monai.networks.nets import DynUNet

    net = module.backbone
    strides = net.stage_strides
    model = DynUNet(spatial_dims=3, in_channels=net.in_channels, out_channels=net.out_channels,
                    kernel_size=[3] * len(strides), strides=strides, upsample_kernel_size=strides[1:],
                    filters=list(net.preset["features_per_stage"]), res_block=True).to(device)
    optimizer = _adamw(model, cfg, device)
    crop = module.stage.crop_size
    x = torch.rand(views, net.in_channels, *crop, device=device)
    cube = net.total_stride
    mask = torch.rand(views, (crop[0] // cube) * (crop[1] // cube) * (crop[2] // cube), device=device) < 0.6
    visible = cube_visibility(mask, crop)

    def step():
        with autocast():
            pred = model(x * visible)
            loss = ((pred.float() - x).pow(2) * (1 - visible)).sum() / (1 - visible).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, "MONAI DynUNet (res_block, same widths)", "masked-voxel MSE at the same view count"


def _measure(step, views: int, device: torch.device, warmup: int, steps: int, ceiling: float) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    flops = _flops(step)
    seconds = _time(step, warmup, steps, device)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    tflops = flops / seconds / 1e12
    return {"samples_per_s": round(views / seconds, 2), "gflop_per_step": round(flops / 1e9, 2),
            "tflop_per_s": round(tflops, 3), "mfu": round(tflops / ceiling, 4),
            "peak_gib": None if peak is None else round(peak, 2)}


def profile_table(step, device: torch.device, rows: int, steps: int = 3) -> str:
    """The `rows` operators that take the most time over `steps` calls of `step` (device time on CUDA)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    step()  # warm
    _sync(device)
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        _sync(device)
    key = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    return f"profile of voxfm's step, {steps} steps, by {key}:\n" + \
        prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60)


def bench_model(cfg, warmup: int = 2, steps: int = 5, profile: int = 0) -> dict:
    """→ the figures of voxfm's step and of the reference; `profile` > 0 adds that many operator rows of a
    profile of voxfm's step as text under "profile"."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def autocast():
        return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()

    ceiling = measured_peak_tflops(device)
    step, views, module = voxfm_step(cfg, device, autocast)
    ours = _measure(step, views, device, warmup, steps, ceiling)
    ours["stage_ms"] = round(_time(step.stage_only, warmup, steps, device) * 1e3, 2)
    reference = monai_dynunet_step if hasattr(module.backbone, "stage_strides") else monai_mae_step
    try:  # MONAI running out of memory where voxfm fits is a result, not a crash
        ref_step, ref_name, note = reference(cfg, module, device, autocast, views)
        del module, step
        theirs = _measure(ref_step, views, device, warmup, steps, ceiling)
    except torch.cuda.OutOfMemoryError:
        ref_name = "MONAI DynUNet" if reference is monai_dynunet_step else "MONAI MaskedAutoEncoderViT"
        theirs, note = None, "out of memory"
    table = None
    if profile > 0:  # last, on a fresh step: a profiler session leaves FlopCounterMode counting nothing after it
        ref_step = None  # the reference's memory back before a second voxfm step is built
        if device.type == "cuda":
            torch.cuda.empty_cache()
        table = profile_table(voxfm_step(cfg, device, autocast)[0], device, profile)
    ratio = (lambda key: None) if theirs is None else (lambda key: round(ours[key] / theirs[key], 2))
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "precision": "bf16-mixed" if device.type == "cuda" else "fp32",
        "matmul_ceiling_tflop_per_s": round(ceiling, 2), "views_per_step": views,
        "crop": list(cfg.data.crop_size), "voxfm": ours,
        "reference": {"name": ref_name, "note": note, "out_of_memory": theirs is None, **(theirs or {})},
        "ratio_samples_per_s": ratio("samples_per_s"), "ratio_tflop_per_s": ratio("tflop_per_s"),
        **({"profile": table} if table else {}),
    }


def format_model_bench(result: dict, experiment: str) -> str:
    r = result["reference"]
    lines = [f"{experiment}: {result['views_per_step']} views of {result['crop']} per step, {result['device']}, "
             f"{result['precision']}, matmul ceiling {result['matmul_ceiling_tflop_per_s']} TFLOP/s",
             f"  {'':<40}{'samples/s':>11}{'GFLOP/step':>12}{'TFLOP/s':>10}{'MFU':>8}{'peak GiB':>10}"]
    for name, row in (("voxfm", result["voxfm"]), (r["name"], r)):
        if row.get("out_of_memory"):
            lines.append(f"  {name:<40}{'out of memory':>11}")
            continue
        peak = "-" if row["peak_gib"] is None else row["peak_gib"]
        lines.append(f"  {name:<40}{row['samples_per_s']:>11}{row['gflop_per_step']:>12}{row['tflop_per_s']:>10}"
                     f"{row['mfu']:>8.1%}{peak:>10}")
    if r.get("out_of_memory"):
        lines.append("  voxfm / MONAI: MONAI ran out of memory at these shapes")
    else:
        lines.append(f"  voxfm / MONAI: {result['ratio_samples_per_s']}x samples/s, {result['ratio_tflop_per_s']}x "
                     "TFLOP/s" + (f"  ({r['note']})" if r["note"] else ""))
    lines.append(f"  voxfm's step includes its device stage (views, augmentation, masks): "
                 f"{result['voxfm']['stage_ms']} ms; MONAI's starts from ready tensors")
    return "\n".join(lines)
