"""Small forward + backward workload for compute-sanitizer (bench/gpu_check.sh runs it under memcheck and
racecheck): every CUDA kernel path once, on shapes small enough that the instrumented run stays short.
Each output is compared with the CPU path, so a kernel that reads or writes the wrong place also fails here."""
import sys

import torch

import groupnorm_ext

CASES = [  # (shape, G, layout, dtype)
    ((2, 6, 5, 3), 3, "contiguous", torch.float32),
    ((2, 6, 5, 3), 3, "channels_last", torch.float16),
    ((3, 64, 7, 9), 32, "contiguous", torch.bfloat16),
    ((2, 40, 17, 13), 8, "channels_last", torch.float32),
    ((1, 16, 4, 6, 5), 4, "channels_last_3d", torch.bfloat16),
    ((1, 8, 70, 130), 2, "contiguous", torch.float32),       # many chunks per slab
    ((2, 64, 9, 11), 16, "misaligned", torch.float16),
    ((4, 8, 33), 2, "contiguous", torch.float64),
    ((1, 32, 16, 16), 1, "channels_last", torch.float32),
    ((2, 64, 8, 8), 8, "channels_last", torch.bfloat16),   # single-read NSC forward over a cluster
    ((2, 640, 8, 8), 32, "channels_last", torch.float16),   # single-read, one element per load, cluster
    ((1, 6, 50, 70), 1, "channels_last", torch.float32),    # unvectorizable slab over the on-chip limit
]


def make(shape, layout, dtype):
    if layout == "misaligned":
        wide = torch.randn(shape[:-1] + (shape[-1] + 1,), device="cuda").to(dtype)
        return wide[..., 1:]
    fmt = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last,
           "channels_last_3d": torch.channels_last_3d}[layout]
    return torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=fmt)


# The fused activations take turns over the cases (their apply kernel and backward pre-pass).
ACTIVATIONS = ["identity", "silu", "relu", "gelu", "gelu_tanh"]


def main():
    failures = 0
    for i, (shape, G, layout, dtype) in enumerate(CASES):
        act = ACTIVATIONS[i % len(ACTIVATIONS)]
        x = make(shape, layout, dtype).requires_grad_(True)
        w = torch.randn(shape[1], device="cuda", dtype=dtype, requires_grad=True)
        b = torch.randn(shape[1], device="cuda", dtype=dtype, requires_grad=True)
        gy = torch.randn(shape, device="cuda").to(dtype)
        y = groupnorm_ext.group_norm(x, G, w, b, 1e-5, act)
        gx, gw, gb = torch.autograd.grad(y, (x, w, b), gy)
        torch.cuda.synchronize()
        xc, wc, bc = (t.detach().cpu().double().requires_grad_(True) for t in (x, w, b))
        yc = groupnorm_ext.group_norm(xc, G, wc, bc, 1e-5, act)
        ref = (yc,) + torch.autograd.grad(yc, (xc, wc, bc), gy.cpu().double())
        for name, got, exp in zip(("y", "dx", "dw", "db"), (y, gx, gw, gb), ref):
            err = (got.detach().cpu().double() - exp.detach()).abs().max().item()
            scale = max(exp.abs().max().item(), 1.0)
            ok = err <= (5e-2 if dtype in (torch.float16, torch.bfloat16) else 1e-3) * scale
            failures += not ok
            if not ok:
                print(f"MISMATCH {shape} G{G} {layout} {dtype} {act} {name}: {err:.3e}")
    print(f"sanitize workload: {len(CASES)} cases, {failures} mismatches")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
