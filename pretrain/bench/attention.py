"""`voxfm bench attention`: `F.scaled_dot_product_attention` forward + backward with each backend forced, at the
shapes voxfm's ViTs run, so the backend per shape is chosen from figures rather than from the dispatcher's rules.

Shapes are [batch, heads, tokens, head_dim] (q, k and v alike, no mask, no dropout, as in `models/vit.py`);
bf16 on CUDA, fp32 on CPU, where `scale` shrinks them to run in seconds. A backend that cannot run a shape
(wrong device, dtype, head size or memory) is reported as unavailable with the dispatcher's reason. TFLOP/s
counts the model's FLOPs, the same for every backend: 4·B·H·N²·d forward (QKᵀ and PV), twice that backward.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from voxfm.pretrain.errors import ConfigError
from voxfm.pretrain.runtime.timing import time_call, timer_name

BACKENDS = ("FLASH_ATTENTION", "CUDNN_ATTENTION", "EFFICIENT_ATTENTION", "MATH")
CPU_BACKENDS = ("FLASH_ATTENTION", "MATH")  # the others are CUDA kernels
CPU_SCALE = 1 / 128


def scaled_shape(shape, scale: float) -> tuple[int, int, int, int]:
    """[B, H, N, d] with B·N shrunk by `scale`: the batch first, the tokens only once the batch is 1."""
    b, h, n, d = (int(x) for x in shape)
    if b * scale >= 1:
        return max(1, round(b * scale)), h, n, d
    return 1, h, max(1, round(n * b * scale)), d


def attention_flops(b: int, h: int, n: int, d: int) -> int:
    return 3 * 4 * b * h * n * n * d


def time_backend(backend: str, shape, device: torch.device, dtype: torch.dtype, warmup: int, steps: int) -> dict:
    """→ {"ms", "tflop_per_s"} of forward + backward with only `backend` allowed, or {"unavailable": reason}."""
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(*shape, device=device, dtype=dtype, generator=g).requires_grad_() for _ in range(3))
    grad = torch.randn(*shape, device=device, dtype=dtype, generator=g)

    def call():
        out = F.scaled_dot_product_attention(q, k, v)
        torch.autograd.grad(out, (q, k, v), grad)  # no .grad to accumulate into

    with warnings.catch_warnings(record=True) as caught, sdpa_kernel([getattr(SDPBackend, backend)]):
        warnings.simplefilter("always")  # the dispatcher says why a kernel does not apply as warnings
        try:
            seconds = time_call(call, device, warmup=warmup, steps=steps)
        except torch.cuda.OutOfMemoryError:
            return {"unavailable": "out of memory"}
        except RuntimeError as err:
            reasons = [str(w.message).splitlines()[0] for w in caught] or [str(err).splitlines()[0]]
            return {"unavailable": "; ".join(dict.fromkeys(reasons))}
    flops = attention_flops(*shape)
    return {"ms": float(f"{seconds * 1e3:.4g}"), "tflop_per_s": float(f"{flops / seconds / 1e12:.4g}")}


def bench_attention(shapes: dict, warmup: int = 3, steps: int = 10, scale: float | None = None, backends=None) -> dict:
    """shapes: {name: [B, H, N, d]} → {"rows": one per (shape, backend), "best": {name: fastest backend}, ...}.
    `scale` (default 1 on CUDA, 1/128 on CPU) shrinks the shapes; `backends` defaults to those of the device."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    scale = (1.0 if device.type == "cuda" else CPU_SCALE) if scale is None else float(scale)
    backends = tuple(backends or (BACKENDS if device.type == "cuda" else CPU_BACKENDS))
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ConfigError(f"backends={list(backends)}: expected some of {list(BACKENDS)}")
    if not 0 < scale <= 1:
        raise ConfigError(f"scale={scale}: expected 0 < scale <= 1")
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows, best = [], {}
    for name, full in shapes.items():
        if len(full) != 4 or min(int(x) for x in full) < 1:
            raise ConfigError(f"shapes.{name}={list(full)}: expected [batch, heads, tokens, head_dim], all >= 1")
        shape = scaled_shape(full, scale)
        for backend in backends:
            rows.append(
                {
                    "shape": name,
                    "size": list(shape),
                    "backend": backend,
                    **time_backend(backend, shape, device, dtype, warmup, steps),
                }
            )
            if device.type == "cuda":  # the math backend's N² scores at 8,000 tokens: gone before the next
                torch.cuda.empty_cache()
        timed = [r for r in rows if r["shape"] == name and "ms" in r]
        best[name] = min(timed, key=lambda r: r["ms"])["backend"] if timed else None
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "dtype": str(dtype).removeprefix("torch."),
        "scale": scale,
        "timer": timer_name(device),
        "warmup": warmup,
        "steps": steps,
        "rows": rows,
        "best": best,
    }


def format_attention_bench(result: dict) -> str:
    lines = [
        f"scaled_dot_product_attention forward + backward, {result['device']}, {result['dtype']}, shapes x"
        f"{result['scale']:g} (batch x tokens); {result['timer']}, mean of {result['steps']} calls after "
        f"{result['warmup']} warm-up",
        f"  {'shape':<28}{'[B, H, N, d]':<22}{'backend':<21}{'ms':>10}{'TFLOP/s':>10}",
    ]
    for r in result["rows"]:
        size = str(r["size"])
        if "ms" in r:
            mark = "  <- fastest" if result["best"][r["shape"]] == r["backend"] else ""
            lines.append(f"  {r['shape']:<28}{size:<22}{r['backend']:<21}{r['ms']:>10}{r['tflop_per_s']:>10}{mark}")
        else:
            lines.append(f"  {r['shape']:<28}{size:<22}{r['backend']:<21}  unavailable: {r['unavailable'][:90]}")
    lines.append("  fastest: " + ", ".join(f"{name} {b or 'none ran'}" for name, b in result["best"].items()))
    return "\n".join(lines)
