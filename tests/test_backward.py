"""Gradients: gradcheck in float64, float32 gradients vs torch's F.group_norm, low-precision gradients vs the
fp64 reference, and the group_norm_backward op's output_mask contract."""
import itertools

import pytest
import torch
import torch.nn.functional as F

import groupnorm_ext
from reference import (LOW_PRECISION, layouts_for_rank, make_affine, make_grad_out, make_input, ref_grads,
                       shape_id, tol)

ops = torch.ops.groupnorm_ext

AFFINE = ["both", "none", "weight_only", "bias_only"]


def pick_affine(w, b, affine):
    return (w if affine in ("both", "weight_only") else None,
            b if affine in ("both", "bias_only") else None)


def ext_grads(x, G, w, b, grad_out, eps=1e-5):
    """(grad_input, grad_weight, grad_bias) of groupnorm_ext.group_norm via autograd; None where absent."""
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, w, b)]
    out = groupnorm_ext.group_norm(leaves[0], G, leaves[1], leaves[2], eps)
    out.backward(grad_out)
    return tuple(None if t is None else t.grad for t in leaves)


def torch_grads(x, G, w, b, grad_out, eps=1e-5):
    leaves = [t.detach().clone().requires_grad_(True) if t is not None else None for t in (x, w, b)]
    out = F.group_norm(leaves[0], G, leaves[1], leaves[2], eps)
    out.backward(grad_out)
    return tuple(None if t is None else t.grad for t in leaves)


def assert_grads_close(actual, expected, **kw):
    for name, a, e in zip(("grad_input", "grad_weight", "grad_bias"), actual, expected):
        assert (a is None) == (e is None), f"{name}: got {a is not None}, expected {e is not None}"
        if a is not None:
            torch.testing.assert_close(a.double(), e.double(), msg=lambda m: f"{name}: {m}", **kw)


# ------------------------------------------------------------------------------------------------ gradcheck
GRADCHECK_CASES = [
    pytest.param((3, 6), 3, "contiguous", id="3x6-G3"),
    pytest.param((2, 6, 5), 2, "contiguous", id="2x6x5-G2"),
    pytest.param((2, 4, 3, 3), 2, "contiguous", id="2x4x3x3-G2"),
    pytest.param((2, 4, 3, 3), 2, "channels_last", id="2x4x3x3-G2-channels_last"),
    pytest.param((1, 4, 2, 3, 2), 4, "channels_last_3d", id="1x4x2x3x2-G4-channels_last_3d"),
    pytest.param((2, 4, 3, 3), 1, "strided", id="2x4x3x3-G1-strided"),
]


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("shape,G,layout", GRADCHECK_CASES)
def test_gradcheck_float64(shape, G, layout, affine):
    x = make_input(shape, torch.float64, layout, seed=1, requires_grad=True)
    w, b = pick_affine(*make_affine(shape[1], torch.float64, seed=2, requires_grad=True), affine)
    inputs = tuple(t for t in (x, w, b) if t is not None)

    def fn(*args):
        it = iter(args)
        xx = next(it)
        ww = next(it) if w is not None else None
        bb = next(it) if b is not None else None
        return groupnorm_ext.group_norm(xx, G, ww, bb, 1e-5)

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


# ------------------------------------------------------------------------------------ float32 vs torch
SHAPES = [((3, 6), 3), ((2, 6, 7), 2), ((2, 6, 5, 3), 3), ((1, 8, 3, 4, 5), 4), ((4, 12, 3, 5), 12),
          ((2, 8, 4, 4), 1),
          ((2, 1288, 5, 7), 8),  # channels_last: gradient sums by 16-channel blocks, then a row-loop tail
          ((5, 96, 9, 7), 96), ((7, 30, 41), 10)]  # contiguous: batches of small slabs ending mid-sample
CASES = [pytest.param(s, g, lay, id=f"{shape_id(s)}-G{g}-{lay}")
         for s, g in SHAPES for lay in layouts_for_rank(len(s))]


@pytest.mark.parametrize("affine", ["both", "none"])
@pytest.mark.parametrize("shape,G,layout", CASES)
def test_float32_grads_match_torch(shape, G, layout, affine):
    x = make_input(shape, torch.float32, layout, seed=3)
    w, b = pick_affine(*make_affine(shape[1], torch.float32, seed=4), affine)
    gy = make_grad_out(shape, torch.float32, layout, seed=5)
    got = ext_grads(x, G, w, b, gy)
    assert_grads_close(got, torch_grads(x.contiguous(), G, w, b, gy.contiguous()), **tol(torch.float32, grad=True))
    assert_grads_close(got, ref_grads(x, G, w, b, gy), **tol(torch.float32, grad=True))
    assert got[0].dtype == torch.float32 and got[0].shape == x.shape


@pytest.mark.parametrize("shape,G,layout", [c for c in CASES if c.values[2] in ("contiguous", "channels_last",
                                                                                   "channels_last_3d", "permuted")])
def test_float64_grads_match_reference(shape, G, layout):
    x = make_input(shape, torch.float64, layout, seed=6)
    w, b = make_affine(shape[1], torch.float64, seed=7)
    gy = make_grad_out(shape, torch.float64, layout, seed=8)
    assert_grads_close(ext_grads(x, G, w, b, gy), ref_grads(x, G, w, b, gy), **tol(torch.float64, grad=True))


@pytest.mark.parametrize("x_layout,gy_layout", [("contiguous", "channels_last"), ("channels_last", "contiguous"),
                                                ("channels_last", "strided"), ("contiguous", "permuted")])
def test_grad_out_layout_differs_from_input(x_layout, gy_layout):
    shape, G = (2, 6, 5, 3), 3
    x = make_input(shape, torch.float32, x_layout, seed=9)
    w, b = make_affine(6, seed=10)
    gy = make_grad_out(shape, torch.float32, gy_layout, seed=11)
    assert_grads_close(ext_grads(x, G, w, b, gy), ref_grads(x, G, w, b, gy), **tol(torch.float32, grad=True))


# ------------------------------------------------------------------------------- low precision vs fp64
@pytest.mark.parametrize("affine_dtype", ["same", "float32"])
@pytest.mark.parametrize("dtype", [pytest.param(d, id=str(d)[6:]) for d in LOW_PRECISION])
@pytest.mark.parametrize("shape,G,layout", [
    pytest.param((2, 6, 5, 3), 3, "contiguous", id="2x6x5x3-G3-contiguous"),
    pytest.param((2, 6, 5, 3), 2, "channels_last", id="2x6x5x3-G2-channels_last"),
    pytest.param((2, 1288, 5, 7), 8, "channels_last", id="2x1288x5x7-G8-channels_last"),
    pytest.param((1, 8, 3, 4, 5), 4, "channels_last_3d", id="1x8x3x4x5-G4-channels_last_3d"),
    pytest.param((3, 6, 7), 6, "strided", id="3x6x7-G6-strided"),
    pytest.param((4, 8), 2, "contiguous", id="4x8-G2-contiguous"),
])
def test_low_precision_grads_match_reference(shape, G, layout, dtype, affine_dtype):
    wdtype = dtype if affine_dtype == "same" else torch.float32
    x = make_input(shape, dtype, layout, seed=12)
    w, b = make_affine(shape[1], wdtype, seed=13)
    gy = make_grad_out(shape, dtype, layout, seed=14)
    got = ext_grads(x, G, w, b, gy)
    assert got[0].dtype == dtype
    assert got[1].dtype == wdtype and got[2].dtype == wdtype
    assert_grads_close(got, ref_grads(x, G, w, b, gy), **tol(dtype, grad=True))


# ------------------------------------------------------------------------- which grads are produced
def test_non_affine_call_gives_input_grad():
    x = make_input((2, 6, 5, 3), seed=15, requires_grad=True)
    gy = make_grad_out(x.shape, seed=16)
    groupnorm_ext.group_norm(x, 3).backward(gy)
    assert x.grad is not None
    torch.testing.assert_close(x.grad.double(), ref_grads(x, 3, None, None, gy)[0], **tol(torch.float32, grad=True))


def test_only_weight_and_bias_require_grad():
    x = make_input((2, 6, 5, 3), seed=17)
    w, b = make_affine(6, seed=18, requires_grad=True)
    gy = make_grad_out(x.shape, seed=19)
    out = groupnorm_ext.group_norm(x, 3, w, b)
    assert out.requires_grad
    out.backward(gy)
    assert x.grad is None
    _, gw, gb = ref_grads(x, 3, w, b, gy)
    torch.testing.assert_close(w.grad.double(), gw, **tol(torch.float32, grad=True))
    torch.testing.assert_close(b.grad.double(), gb, **tol(torch.float32, grad=True))


def test_only_input_requires_grad_with_affine():
    x = make_input((2, 6, 5, 3), seed=20, requires_grad=True)
    w, b = make_affine(6, seed=21)
    gy = make_grad_out(x.shape, seed=22)
    groupnorm_ext.group_norm(x, 3, w, b).backward(gy)
    assert w.grad is None and b.grad is None
    torch.testing.assert_close(x.grad.double(), ref_grads(x, 3, w, b, gy)[0], **tol(torch.float32, grad=True))


def test_no_grad_when_nothing_requires_grad():
    x = make_input((2, 6, 5, 3), seed=23)
    w, b = make_affine(6, seed=24)
    assert not groupnorm_ext.group_norm(x, 3, w, b).requires_grad
    with torch.no_grad():
        xr = x.clone().requires_grad_(True)
        assert not groupnorm_ext.group_norm(xr, 3, w, b).requires_grad


def test_empty_batch_backward():
    x = make_input((0, 6, 5, 3), requires_grad=True)
    w, b = make_affine(6, requires_grad=True)
    out = groupnorm_ext.group_norm(x, 3, w, b)
    out.backward(torch.ones_like(out))
    assert x.grad.shape == x.shape
    torch.testing.assert_close(w.grad, torch.zeros(6))
    torch.testing.assert_close(b.grad, torch.zeros(6))


# ----------------------------------------------------------------------- the group_norm_backward op
MASKS = [list(m) for m in itertools.product([False, True], repeat=3)]


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("mask", MASKS, ids=lambda m: "".join("1" if v else "0" for v in m))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_backward_op_output_mask(mask, affine, dtype):
    shape, G = (2, 6, 5, 3), 3
    x = make_input(shape, dtype, seed=25)
    w, b = pick_affine(*make_affine(6, dtype, seed=26), affine)
    gy = make_grad_out(shape, dtype, seed=27)
    _, mean, rstd = ops.group_norm_forward(x, G, w, b, 1e-5, "identity")
    gx, gw, gb = ops.group_norm_backward(gy, x, mean, rstd, w, b, G, "identity", mask)
    expected = ref_grads(x, G, w, b, gy)
    wanted = [mask[0], mask[1] and w is not None, mask[2] and b is not None]
    for name, got, want, exp in zip(("grad_input", "grad_weight", "grad_bias"), (gx, gw, gb), wanted, expected):
        if not want:
            assert got is None, f"{name} was not requested (mask={mask}, affine={affine}) but came back"
        else:
            assert got is not None, f"{name} was requested (mask={mask}, affine={affine}) but is None"
            assert got.dtype == dtype
            torch.testing.assert_close(got.double(), exp, **tol(dtype, grad=True))
    if gx is not None:
        assert gx.shape == x.shape


@pytest.mark.parametrize("layout", ["channels_last", "strided"])
def test_backward_op_layouts(layout):
    shape, G = (2, 6, 5, 3), 2
    x = make_input(shape, torch.float32, layout, seed=28)
    w, b = make_affine(6, seed=29)
    gy = make_grad_out(shape, torch.float32, layout, seed=30)
    _, mean, rstd = ops.group_norm_forward(x, G, w, b, 1e-5, "identity")
    got = ops.group_norm_backward(gy, x, mean, rstd, w, b, G, "identity", [True, True, True])
    assert_grads_close(got, ref_grads(x, G, w, b, gy), **tol(torch.float32, grad=True))


@pytest.mark.parametrize("dtype,bias_dtype", [(torch.float32, torch.float32), (torch.bfloat16, torch.float32),
                                              (torch.float16, torch.float16)], ids=["float32", "bf16_f32", "float16"])
def test_bias_changed_in_place_before_backward(dtype, bias_dtype):
    """As torch's group_norm, the backward does not keep the bias (its value does not enter the
    gradients without an activation): changing it in place between forward and backward (an
    optimizer or EMA step on a bias) is no error, and the gradients, grad_bias's dtype included,
    are torch's. With a fused activation the backward needs the bias, and the change is reported."""
    x = make_input((2, 6, 5), dtype, "contiguous", seed=71).requires_grad_()
    w = torch.randn(6, dtype=bias_dtype, requires_grad=True)
    dy = make_grad_out((2, 6, 5), dtype, seed=72)
    grads = []
    for fn in (groupnorm_ext.group_norm, F.group_norm):
        b = torch.randn(6, generator=torch.Generator().manual_seed(73)).to(bias_dtype).requires_grad_()
        y = fn(x, 3, w, b)
        with torch.no_grad():
            b.add_(0.5)
        grads.append(torch.autograd.grad(y, (x, w, b), dy))
    for ours, theirs in zip(*grads):
        assert ours.dtype == theirs.dtype
        torch.testing.assert_close(ours.float(), theirs.float(), **tol(dtype, grad=True))
    b = torch.randn(6, dtype=bias_dtype, requires_grad=True)
    y = groupnorm_ext.group_norm(x, 3, w, b, activation="silu")
    with torch.no_grad():
        b.add_(0.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        torch.autograd.grad(y, (x, w, b), dy)


def test_bias_only_gradients_without_saved_bias():
    """grad_bias when the bias is the only parameter, no weight (its dtype comes from what the
    forward recorded), and through double backward."""
    x = make_input((2, 4, 3, 3), torch.float64, "channels_last", seed=74).requires_grad_()
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    torch.autograd.gradcheck(lambda x, b: groupnorm_ext.group_norm(x, 2, None, b), (x, b))
    torch.autograd.gradgradcheck(lambda x, b: groupnorm_ext.group_norm(x, 2, None, b), (x, b))


# ------------------------------------------------------------------ channels-last schedules vs fp64
# Shapes whose CPU backward schedule depends on N and the thread count: strips of a few groups' channels
# (N = 1 or 3 on 2 threads, x and dy of a strip within L2), per-sample fused (N = 4), split.
SCHEDULE_SHAPES = [(1, 512, 3, 5, 4), (3, 1280, 8, 8, 32), (1, 2560, 4, 4, 32), (4, 640, 6, 6, 32),
                   (1, 640, 40, 40, 32)]


@pytest.mark.parametrize("dtype", [pytest.param(d, id=str(d)[6:])
                                   for d in (torch.float32, torch.float64, torch.bfloat16, torch.float16)])
@pytest.mark.parametrize("case", SCHEDULE_SHAPES, ids=lambda c: f"{shape_id(c[:4])}-G{c[4]}")
def test_channels_last_schedules_match_reference(case, dtype):
    shape, G = case[:4], case[4]
    x = make_input(shape, dtype, "channels_last", seed=61)
    w, b = make_affine(shape[1], dtype, seed=62)
    gy = make_grad_out(shape, dtype, "channels_last", seed=63)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        got = ext_grads(x, G, w, b, gy)
    finally:
        torch.set_num_threads(saved)
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    assert_grads_close(got, ref_grads(x, G, w, b, gy), **tol(dtype, grad=True))
