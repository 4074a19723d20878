"""Property-based tests (hypothesis): random problems against the fp64 reference, forward and backward.

Each example draws a rank (2..5), N (1 included), a group count G and channels per group D (D = 1: one
channel per group; with rank 2, one *element* per group), spatial sizes 1..9 (odd ones included), a dtype,
a value regime, an eps, the affine parameters (none / weight / bias / both; float32 affine for float16 and
bfloat16 input) and a memory layout: dense formats, and non-contiguous views -- every-other-element
slices, slices with an offset along any dim, transposes of any two dims, a fully permuted storage,
expanded (stride-0) dims, and a scalar expanded to the whole shape (stride 0 everywhere).

Tolerances are per group, not per tensor: the base tolerance of the dtype (reference.py), raised only by
the group's conditioning max|x| * rstd (the rounding of x - mean, or of the folded x * scale + shift, in the
accumulation dtype). A degenerate group (one element, or constant) therefore loosens nothing elsewhere.

Profiles (tests/conftest.py): HYPOTHESIS_PROFILE=ci (default, bounded, derandomized) or long.
"""
import math

import pytest
import torch
import torch.nn.functional as F

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, note  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import groupnorm_ext  # noqa: E402
from reference import (GRAD_TOLERANCES, STAT_TOLERANCES, TOLERANCES, make_input, ref_group_norm,  # noqa: E402
                       stat_dtype)

ops = torch.ops.groupnorm_ext

MAX_ELEMS = 4096
DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
# (scale, offset) of the drawn values: the usual case, tiny spread, large spread, mean >> std.
REGIMES = [(2.0, 0.5), (0.01, 0.0), (100.0, 0.0), (1.0, 30.0)]
EPS = [1e-5, 1e-3, 0.1]
FWD_ULPS = 8      # conditioning multiplier for outputs (cf. reference.CONDITIONING_ULPS)
STAT_ULPS = 64    # for mean / rstd (a chunk sum of up to MAX_ELEMS terms)
GRAD_ULPS = 32    # for gradients


def views_for_rank(rank):
    views = ["contiguous"]
    if rank == 4:
        views.append("channels_last")
    if rank == 5:
        views.append("channels_last_3d")
    if rank >= 3:
        # channels-last order for any rank, (0, 2, ..., 1) dense: the NSC kernels at rank 4 and 5, where torch
        # reads it as channels_last(_3d); a copy to contiguous at rank 3, as torch makes
        views.append("channels_innermost")
    return views + ["strided", "sliced", "transposed", "permuted", "misaligned", "expanded", "zero_stride"]


# --------------------------------------------------------------------------------------------- strategies
ALL_VIEWS = views_for_rank(4) + ["channels_last_3d"]


@st.composite
def problems(draw):
    # the view first (a fixed list, so that every view is drawn as often), then a rank it allows
    view = draw(st.sampled_from(ALL_VIEWS))
    min_rank = 3 if view == "channels_innermost" else 2
    rank = {"channels_last": 4, "channels_last_3d": 5}.get(view) or draw(st.integers(min_rank, 5))
    N = draw(st.sampled_from([1, 1, 2, 3, 4]))
    G = draw(st.sampled_from([1, 1, 2, 3, 4, 6, 8]))
    D = draw(st.sampled_from([1, 1, 2, 3, 4, 5, 8]))
    C = G * D
    budget = max(1, MAX_ELEMS // (N * C))
    spatial = []
    for _ in range(rank - 2):
        s = draw(st.integers(1, 9))
        s = max(1, min(s, budget))
        budget = max(1, budget // s)
        spatial.append(s)
    shape = (N, C) + tuple(spatial)
    dtype = draw(st.sampled_from(DTYPES))
    assert view in views_for_rank(rank)
    view_args = dict(dim=draw(st.integers(0, rank - 1)), dim2=draw(st.integers(0, rank - 1)),
                     start=draw(st.integers(0, 2)), step=draw(st.integers(1, 3)),
                     expand_mask=draw(st.integers(1, 2 ** rank - 1)))
    affine = draw(st.sampled_from(["none", "weight", "bias", "both"]))
    affine_fp32 = dtype in (torch.float16, torch.bfloat16) and draw(st.booleans())
    scale, offset = draw(st.sampled_from(REGIMES))
    eps = draw(st.sampled_from(EPS))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    return dict(shape=shape, G=G, dtype=dtype, view=view, view_args=view_args, affine=affine,
                affine_fp32=affine_fp32, scale=scale, offset=offset, eps=eps, seed=seed)


# ------------------------------------------------------------------------------------------------- inputs
def as_view(t, view, dim=0, dim2=1, start=0, step=1, expand_mask=1, seed=0):
    """A tensor of t's shape in `view` layout. For "expanded" and "zero_stride" the values are not t's:
    the expanded dims repeat one slice of t (stride 0), "zero_stride" repeats one element everywhere."""
    shape = tuple(t.shape)
    rank = len(shape)
    if view in ("contiguous", "channels_last", "channels_last_3d"):
        fmt = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last,
               "channels_last_3d": torch.channels_last_3d}[view]
        return t.contiguous(memory_format=fmt)
    if view == "channels_innermost":
        perm = [0] + list(range(2, rank)) + [1]
        inv = [perm.index(i) for i in range(rank)]
        return t.permute(perm).contiguous().permute(inv)
    if view == "strided":  # every other element of the last dim
        wide = torch.full(shape[:-1] + (2 * shape[-1],), float("nan"), dtype=t.dtype)
        out = wide[..., ::2]
        out.copy_(t)
        return out
    if view == "misaligned":
        wide = torch.full(shape[:-1] + (shape[-1] + 1,), float("nan"), dtype=t.dtype)
        out = wide[..., 1:]
        out.copy_(t)
        return out
    if view == "sliced":  # t sits at [start::step] along `dim` of a larger, NaN-poisoned tensor
        n = shape[dim]
        wide_shape = list(shape)
        wide_shape[dim] = start + (n - 1) * step + 2  # poisoned elements before, between and after
        wide = torch.full(wide_shape, float("nan"), dtype=t.dtype)
        index = [slice(None)] * rank
        index[dim] = slice(start, start + (n - 1) * step + 1, step)
        out = wide[tuple(index)]
        out.copy_(t)
        return out
    if view == "transposed":
        i, j = (dim, dim2) if dim != dim2 else (0, rank - 1)
        return t.transpose(i, j).contiguous().transpose(i, j)
    if view == "permuted":
        dims = list(range(rank))[::-1]
        return t.permute(dims).contiguous().permute(dims)
    if view == "expanded":
        keep = [slice(None) if not (expand_mask >> d) & 1 else slice(0, 1) for d in range(rank)]
        return t[tuple(keep)].contiguous().expand(shape)
    if view == "zero_stride":
        return t.reshape(-1)[seed % max(1, t.numel())].clone().expand(shape) if t.numel() else t
    raise ValueError(view)


def build(p):
    """(x, w, b) for problem p; x in p's view layout, w/b None or (C,) in the affine dtype."""
    x = make_input(p["shape"], p["dtype"], "contiguous", seed=p["seed"], scale=p["scale"], offset=p["offset"])
    x = as_view(x, p["view"], seed=p["seed"], **p["view_args"])
    assert tuple(x.shape) == p["shape"]
    if p["view"] in ("strided", "sliced", "misaligned"):
        assert not torch.isnan(x).any(), "view helper left a NaN gap inside the view"
    C = p["shape"][1]
    adt = torch.float32 if p["affine_fp32"] else p["dtype"]
    gen = torch.Generator().manual_seed(p["seed"] + 1)
    base = torch.float64 if adt == torch.float64 else torch.float32
    w = (1.0 + 0.5 * torch.randn(C, generator=gen, dtype=base)).to(adt)
    b = (0.5 * torch.randn(C, generator=gen, dtype=base)).to(adt)
    return x, (w if p["affine"] in ("weight", "both") else None), (b if p["affine"] in ("bias", "both") else None)


def describe(p, x):
    note(f"problem: {p}")
    note(f"x: shape {tuple(x.shape)} strides {x.stride()} offset {x.storage_offset()} dtype {x.dtype}")


# ------------------------------------------------------------------------------------------ tolerances
def acc_eps(dtype):
    return torch.finfo(stat_dtype(dtype)).eps


def per_group(t, G):
    """(N, C, *) -> (N, G, group_elems), fp64."""
    return t.detach().double().reshape(t.shape[0], G, -1)


def expand_groups(v, shape, G):
    """(N, G) -> per element of an (N, C, *) tensor."""
    N = shape[0]
    per = math.prod(shape) // (N * G) if N * G else 0
    return v[..., None].expand(N, G, per).reshape(shape)


def channel_vec(t, shape, dtype=torch.float64):
    """(C,) or None -> broadcastable to (N, C, *)."""
    C = shape[1]
    v = torch.ones(C, dtype=dtype) if t is None else t.detach().to(dtype).abs()
    return v.reshape((1, C) + (1,) * (len(shape) - 2))


def assert_within(actual, expected, atol, rtol, what):
    """|actual - expected| <= atol + rtol * |expected| elementwise (atol may be a tensor); NaNs must agree."""
    a, e = actual.detach().double(), expected.detach().double()
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != {tuple(e.shape)}"
    nan_a, nan_e = torch.isnan(a), torch.isnan(e)
    assert torch.equal(nan_a, nan_e), (
        f"{what}: NaN at {nan_a.nonzero()[:5].tolist()}, expected at {nan_e.nonzero()[:5].tolist()}")
    err = (a - e).abs().nan_to_num(0.0)
    bound = (atol + rtol * e.abs()).nan_to_num(0.0)
    bad = err > bound
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        worst = (err - bound).argmax()
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {a.numel()} elements out of tolerance; first at {idx}: "
            f"got {a[tuple(idx)].item()!r}, expected {e[tuple(idx)].item()!r}, bound {bound[tuple(idx)].item():.3g}; "
            f"worst excess {(err - bound).flatten()[worst].item():.3g}")


# ------------------------------------------------------------------------------------------------ tests
@given(problems())
def test_forward_matches_reference(p):
    x, w, b = build(p)
    describe(p, x)
    G, dtype, eps, shape = p["G"], p["dtype"], p["eps"], p["shape"]

    out, mean, rstd = ops.group_norm_forward(x, G, w, b, eps, "identity")
    exp_out, exp_mean, exp_rstd = ref_group_norm(x, G, w, b, eps)
    assert out.dtype == dtype and tuple(out.shape) == shape
    # the layout torch's group_norm gives its output (torch.group_norm: no one-value-per-group check)
    assert out.stride() == torch.group_norm(x, G, w, b, eps).stride(), "output strides differ from torch's"
    assert mean.dtype == stat_dtype(dtype) and tuple(mean.shape) == (shape[0], G)
    assert rstd.dtype == stat_dtype(dtype) and tuple(rstd.shape) == (shape[0], G)

    ae = acc_eps(dtype)
    xabs = per_group(x, G).abs().amax(-1)                        # (N, G)
    cond = xabs * exp_rstd                                        # conditioning of each group
    base = TOLERANCES[dtype]
    atol = torch.clamp(FWD_ULPS * ae * expand_groups(cond, shape, G) * channel_vec(w, shape), min=base["atol"])
    assert_within(out, exp_out, atol, base["rtol"], "output")

    sbase = STAT_TOLERANCES[stat_dtype(dtype)]
    assert_within(mean, exp_mean, torch.clamp(STAT_ULPS * ae * xabs, min=sbase["atol"]), sbase["rtol"], "mean")
    assert_within(rstd, exp_rstd, sbase["atol"], max(sbase["rtol"], STAT_ULPS * ae), "rstd")

    # the differentiable op and the Python API give the forward op's bits
    assert torch.equal(ops.group_norm(x, G, w, b, eps, "identity"), out)
    if x.numel() == G:  # one value per group: the Python API raises, as torch.nn.functional.group_norm
        with pytest.raises(ValueError, match="more than 1 value"):
            groupnorm_ext.group_norm(x, G, w, b, eps)
        with pytest.raises(ValueError, match="more than 1 value"):
            F.group_norm(x, G, w, b, eps)
    else:
        assert torch.equal(groupnorm_ext.group_norm(x, G, w, b, eps), out)


GRAD_VIEWS = ["contiguous", "same_as_input", "transposed", "strided", "expanded", "zero_stride"]


@given(problems(), st.sampled_from(GRAD_VIEWS), st.tuples(st.booleans(), st.booleans(), st.booleans()))
def test_backward_matches_reference(p, grad_view, needs):
    x, w, b = build(p)
    describe(p, x)
    G, dtype, eps, shape = p["G"], p["dtype"], p["eps"], p["shape"]
    need_x, need_w, need_b = needs
    need_w, need_b = need_w and w is not None, need_b and b is not None
    if not (need_x or need_w or need_b):
        need_x = True

    dy = make_input(shape, dtype, "contiguous", seed=p["seed"] + 2, scale=1.0, offset=0.25)
    gv = p["view"] if grad_view == "same_as_input" else grad_view
    if gv not in views_for_rank(len(shape)):
        gv = "contiguous"
    dy = as_view(dy, gv, seed=p["seed"] + 3, **p["view_args"])
    note(f"grad_out: view {gv} strides {dy.stride()}; requires_grad x/w/b = {need_x}/{need_w}/{need_b}")

    xl = x.detach().requires_grad_(need_x)
    wl = None if w is None else w.detach().clone().requires_grad_(need_w)
    bl = None if b is None else b.detach().clone().requires_grad_(need_b)
    out = ops.group_norm(xl, G, wl, bl, eps, "identity")  # the op: one-value groups included
    leaves = [t for t, need in ((xl, need_x), (wl, need_w), (bl, need_b)) if need]
    grads = iter(torch.autograd.grad(out, leaves, dy))
    gx = next(grads) if need_x else None
    gw = next(grads) if need_w else None
    gb = next(grads) if need_b else None

    # fp64 reference gradients of the same (rounded) inputs
    x64 = x.detach().double().requires_grad_(True)
    w64 = None if w is None else w.detach().double().requires_grad_(True)
    b64 = None if b is None else b.detach().double().requires_grad_(True)
    ref_out, _, exp_rstd = ref_group_norm(x64, G, w64, b64, eps)
    inputs = [t for t in (x64, w64, b64) if t is not None]
    ref = dict(zip(["x"] + (["w"] if w is not None else []) + (["b"] if b is not None else []),
                   torch.autograd.grad(ref_out, inputs, dy.double())))
    exp_rstd = exp_rstd.detach()

    ae = acc_eps(dtype)
    base = GRAD_TOLERANCES[dtype]
    dy64 = dy.detach().double()
    cond = per_group(x, G).abs().amax(-1) * exp_rstd                       # (N, G)
    if gx is not None:
        assert gx.dtype == dtype and tuple(gx.shape) == shape
        # terms of size rstd * |w*dy| * (1 + |x| * rstd) cancel in grad_input
        wdy = per_group(dy64 * channel_vec(w, shape), G).abs().amax(-1)    # (N, G)
        scale = exp_rstd * (1.0 + cond) * wdy
        atol = torch.clamp(GRAD_ULPS * ae * expand_groups(scale, shape, G), min=base["atol"])
        assert_within(gx, ref["x"], atol, base["rtol"], "grad_input")
    red = [0] + list(range(2, len(shape)))
    if gw is not None:
        assert gw.dtype == w.dtype and tuple(gw.shape) == tuple(w.shape)
        # sum over (n, s) of dy * xhat, xhat rounded with error ~ eps * cond
        s = (dy64.abs() * (1.0 + expand_groups(cond, shape, G))).sum(red)
        assert_within(gw, ref["w"], torch.clamp(GRAD_ULPS * ae * s, min=base["atol"]), base["rtol"], "grad_weight")
    if gb is not None:
        assert gb.dtype == b.dtype and tuple(gb.shape) == tuple(b.shape)
        s = dy64.abs().sum(red)
        assert_within(gb, ref["b"], torch.clamp(GRAD_ULPS * ae * s, min=base["atol"]), base["rtol"], "grad_bias")


@given(problems())
def test_forward_is_layout_independent(p):
    """The same values in another layout give the same result (to the dtype's tolerance)."""
    x, w, b = build(p)
    describe(p, x)
    G, eps = p["G"], p["eps"]
    out = ops.group_norm(x, G, w, b, eps, "identity")  # the op: one-value groups included
    dense = ops.group_norm(x.contiguous(), G, w, b, eps, "identity")
    exp, _, exp_rstd = ref_group_norm(x, G, w, b, eps)
    cond = per_group(x, G).abs().amax(-1) * exp_rstd
    base = TOLERANCES[p["dtype"]]
    atol = torch.clamp(2 * FWD_ULPS * acc_eps(p["dtype"]) * expand_groups(cond, p["shape"], G)
                       * channel_vec(w, p["shape"]), min=base["atol"])
    assert_within(out, dense, atol, 2 * base["rtol"], "output vs contiguous copy")
