"""The one fp64 reference, the tolerances, and the input/layout helpers every test file shares.

The reference is written with plain torch ops (reshape to (N, G, -1), mean, biased var) so that it is
independent of both the extension and torch's own group_norm kernels.
"""
from __future__ import annotations

import inspect
import os
import subprocess
import sys

import torch

# ---------------------------------------------------------------------------------------------------------
# Tolerances, per dtype, in one place.
#
# Outputs are compared in fp64 against the fp64 reference computed from the *same* (already rounded) input,
# so the only error left is the kernel's accumulation error plus one final rounding to the output dtype:
# half has a 2**-11 and bfloat16 a 2**-8 unit roundoff; normalized outputs are O(1..10).
# Gradients sum over a whole group (and over N * spatial for weight/bias), so they get a little more room.
# ---------------------------------------------------------------------------------------------------------
TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=1e-2, rtol=2e-3),
    torch.bfloat16: dict(atol=2e-2, rtol=2e-2),
}

GRAD_TOLERANCES = {
    torch.float64: dict(atol=1e-9, rtol=1e-9),
    torch.float32: dict(atol=1e-4, rtol=1e-4),
    torch.float16: dict(atol=2e-2, rtol=1e-2),
    torch.bfloat16: dict(atol=5e-2, rtol=3e-2),
}

# Statistics (mean, rstd) are accumulated in float32 (float64 for float64 input) whatever the input dtype.
STAT_TOLERANCES = {
    torch.float64: dict(atol=1e-10, rtol=1e-10),
    torch.float32: dict(atol=1e-5, rtol=1e-5),
}


# Kernels (torch's included) may compute y = x * (rstd * w) + (b - mean * rstd * w) in the accumulation dtype
# (float32, float64 for float64). That form's absolute error is ~ulp * |x| * rstd * |w|, which is far below the
# atol above for well-conditioned groups but not when a group has (almost) zero variance: a one-element group
# has rstd = 1/sqrt(eps) ~ 316, and y = b is then the difference of two numbers of size ~|x| * 316.
CONDITIONING_ULPS = 8


def forward_tol(dtype: torch.dtype, x: torch.Tensor, num_groups: int, weight=None, eps: float = 1e-5) -> dict:
    """assert_close kwargs for a forward output: TOLERANCES[dtype], with atol raised to cover the rounding of
    the folded form above when rstd is large (see CONDITIONING_ULPS)."""
    base = TOLERANCES[dtype]
    if x.numel() == 0:
        return dict(base)
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    _, _, rstd = ref_group_norm(x, num_groups, None, None, eps)
    size = x.detach().abs().max().double() * rstd.max()
    if weight is not None:
        size = size * weight.detach().abs().max().double()
    return dict(atol=max(base["atol"], CONDITIONING_ULPS * torch.finfo(acc).eps * size.item()), rtol=base["rtol"])


def tol(dtype: torch.dtype, grad: bool = False) -> dict:
    """assert_close kwargs for results of `dtype` (forward outputs, or gradients when grad=True)."""
    return (GRAD_TOLERANCES if grad else TOLERANCES)[dtype]


def stat_dtype(dtype: torch.dtype) -> torch.dtype:
    """dtype of mean/rstd returned by group_norm_forward for an input of `dtype`."""
    return torch.float64 if dtype == torch.float64 else torch.float32


FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
LOW_PRECISION = [torch.float16, torch.bfloat16]


# ---------------------------------------------------------------------------------------------------------
# Reference
# ---------------------------------------------------------------------------------------------------------
def ref_group_norm(x, num_groups, weight=None, bias=None, eps=1e-5):
    """fp64 group norm: returns (out, mean, rstd); out has x's shape, mean/rstd have shape (N, G).

    Differentiable (plain torch ops), so it also serves as the gradient reference.
    """
    x64 = x.to(torch.float64)
    N, C = x64.shape[0], x64.shape[1]
    g = x64.reshape(N, num_groups, -1)
    mean = g.mean(dim=-1)
    var = g.var(dim=-1, unbiased=False)
    rstd = torch.rsqrt(var + eps)
    y = ((g - mean[..., None]) * rstd[..., None]).reshape(x64.shape)
    affine_shape = (1, C) + (1,) * (x64.dim() - 2)
    if weight is not None:
        y = y * weight.to(torch.float64).reshape(affine_shape)
    if bias is not None:
        y = y + bias.to(torch.float64).reshape(affine_shape)
    return y, mean, rstd


def ref_grads(x, num_groups, weight, bias, grad_out, eps=1e-5):
    """fp64 reference gradients (grad_input, grad_weight, grad_bias); None for absent weight/bias."""
    x64 = x.detach().to(torch.float64).requires_grad_(True)
    w64 = None if weight is None else weight.detach().to(torch.float64).requires_grad_(True)
    b64 = None if bias is None else bias.detach().to(torch.float64).requires_grad_(True)
    out, _, _ = ref_group_norm(x64, num_groups, w64, b64, eps)
    inputs = [t for t in (x64, w64, b64) if t is not None]
    grads = iter(torch.autograd.grad(out, inputs, grad_out.to(torch.float64)))
    return tuple(None if t is None else next(grads) for t in (x64, w64, b64))


# ---------------------------------------------------------------------------------------------------------
# Inputs and layouts
# ---------------------------------------------------------------------------------------------------------
# "strided":    every other element along the last dim (non-contiguous, not any memory format).
# "permuted":   storage with the dims in reverse order, viewed back to (N, C, *) (a transpose view).
# "misaligned": x[..., 1:] of a one-wider tensor: storage offset 1, rows not aligned to vector width.
DENSE_LAYOUTS = ["contiguous", "channels_last", "channels_last_3d"]
VIEW_LAYOUTS = ["strided", "permuted", "misaligned"]

MEMORY_FORMATS = {
    "contiguous": torch.contiguous_format,
    "channels_last": torch.channels_last,
    "channels_last_3d": torch.channels_last_3d,
}


def layouts_for_rank(rank: int) -> list:
    """Every layout valid for a tensor of this rank."""
    out = ["contiguous"]
    if rank == 4:
        out.append("channels_last")
    if rank == 5:
        out.append("channels_last_3d")
    return out + VIEW_LAYOUTS


def to_layout(t: torch.Tensor, layout: str) -> torch.Tensor:
    """Same values as `t`, stored in `layout`."""
    if layout in MEMORY_FORMATS:
        return t.contiguous(memory_format=MEMORY_FORMATS[layout])
    if layout == "strided":
        wide = torch.empty(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype, device=t.device)
        wide.fill_(float("nan"))  # anything read from the gaps poisons the result
        view = wide[..., ::2]
        view.copy_(t)
        return view
    if layout == "permuted":
        dims = list(range(t.dim()))[::-1]
        return t.permute(dims).contiguous().permute(dims)
    if layout == "misaligned":
        wide = torch.full(t.shape[:-1] + (t.shape[-1] + 1,), float("nan"), dtype=t.dtype, device=t.device)
        view = wide[..., 1:]
        view.copy_(t)
        return view
    raise ValueError(f"unknown layout {layout!r}")


def check_layout(t: torch.Tensor, layout: str) -> None:
    """Guard against a layout helper silently producing a contiguous tensor."""
    if layout in ("channels_last", "channels_last_3d") and t.numel() > 0:
        assert t.is_contiguous(memory_format=MEMORY_FORMATS[layout])
    if layout in VIEW_LAYOUTS and t.numel() > 1 and t.shape[-1] > 1:
        assert not t.is_contiguous()


def make_input(shape, dtype=torch.float32, layout="contiguous", seed=0, device="cpu",
               scale=2.0, offset=0.5, requires_grad=False):
    """Fresh random input of `shape` in `layout`: randn * scale + offset, plus a per-channel shift and
    stretch so that every group has its own mean and variance (an indexing bug cannot average out).
    Drawn in float32 (float64 for float64) and then rounded to `dtype`."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.float64 if dtype == torch.float64 else torch.float32
    x = torch.randn(shape, generator=gen, dtype=base) * scale + offset
    if len(shape) >= 2 and shape[1] > 0:
        C = shape[1]
        cshape = (1, C) + (1,) * (len(shape) - 2)
        x = x * torch.linspace(0.5, 1.5, C, dtype=base).reshape(cshape)
        x = x + torch.linspace(-1.0, 1.0, C, dtype=base).reshape(cshape)
    x = to_layout(x.to(dtype=dtype, device=device), layout)
    check_layout(x, layout)
    return x.requires_grad_(requires_grad)


def make_affine(C, dtype=torch.float32, seed=1, device="cpu", requires_grad=False):
    """Random (weight, bias) of shape (C,): weight around 1 (never 0), bias around 0."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.float64 if dtype == torch.float64 else torch.float32
    w = 1.0 + 0.5 * torch.randn(C, generator=gen, dtype=base)
    b = 0.5 * torch.randn(C, generator=gen, dtype=base)
    w = w.to(dtype=dtype, device=device).requires_grad_(requires_grad)
    b = b.to(dtype=dtype, device=device).requires_grad_(requires_grad)
    return w, b


def make_grad_out(shape, dtype=torch.float32, layout="contiguous", seed=2, device="cpu"):
    """Random upstream gradient with a non-zero mean (a mean-free grad_out would hide bugs in the terms
    of grad_input that subtract its group mean)."""
    return make_input(shape, dtype, layout, seed=seed, device=device, scale=1.0, offset=0.25)


def assert_memory_format_preserved(out: torch.Tensor, x: torch.Tensor) -> None:
    """out.is_contiguous(memory_format=f) == x.is_contiguous(memory_format=f) for every format that
    applies to x's rank (the contract for dense inputs)."""
    formats = [torch.contiguous_format]
    if x.dim() == 4:
        formats.append(torch.channels_last)
    if x.dim() == 5:
        formats.append(torch.channels_last_3d)
    for f in formats:
        assert out.is_contiguous(memory_format=f) == x.is_contiguous(memory_format=f), (
            f"memory format not preserved for {f}: input strides {x.stride()}, output strides {out.stride()}"
        )


def shape_id(shape) -> str:
    return "x".join(str(s) for s in shape)


def torch_group_norm(*args, bias: bool = True, **kwargs) -> torch.nn.GroupNorm:
    """torch.nn.GroupNorm(..., bias=...), also on torch releases before 2.13, whose GroupNorm takes no
    bias keyword: there bias=False is the same module with its bias parameter set to None."""
    if "bias" in inspect.signature(torch.nn.GroupNorm.__init__).parameters:
        return torch.nn.GroupNorm(*args, bias=bias, **kwargs)
    m = torch.nn.GroupNorm(*args, **kwargs)
    if m.affine and not bias:
        m.bias = None
    return m


def run_saving_child(script: str, path, **env) -> object:
    """Runs `script` (python -c, argument: `path`) in a child process with OMP_NUM_THREADS=2 and the
    given environment variables set (None: removed), asserts that it succeeded, and returns what it
    saved at `path` with torch.save. For settings read once per process (the env switches of the CPU
    loops): each mode gets its own process over the same inputs."""
    child_env = dict(os.environ, OMP_NUM_THREADS="2")
    for name, value in env.items():
        if value is None:
            child_env.pop(name, None)
        else:
            child_env[name] = value
    out = subprocess.run([sys.executable, "-c", script, str(path)], capture_output=True, text=True,
                         env=child_env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return torch.load(path)
