"""Fused activations (activation="silu" / "relu" / "gelu" / "gelu_tanh"): forward and backward
against the fp64 reference followed by the activation in fp64, against torch's unfused
composition, gradcheck / gradgradcheck in fp64, opcheck, torch.compile, torch.func, the
module. The CUDA cases run where a GPU is."""
import pytest
import torch
import torch.nn.functional as F

import groupnorm_ext
from reference import (DENSE_LAYOUTS, LOW_PRECISION, assert_memory_format_preserved, forward_tol,
                       layouts_for_rank, make_affine, make_grad_out, make_input, ref_group_norm, shape_id, tol)

ops = torch.ops.groupnorm_ext

ACTIVATIONS = ["silu", "relu", "gelu", "gelu_tanh"]
TORCH_ACTIVATIONS = {
    "identity": lambda t: t,
    "silu": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
}
DEVICES = [pytest.param("cpu", id="cpu"),
           pytest.param("cuda", id="cuda",
                        marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"))]
DTYPES = [pytest.param(d, id=str(d)[6:]) for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16)]

SHAPES = [((3, 6), 3), ((2, 6, 7), 2), ((2, 12, 5, 3), 4), ((1, 8, 3, 4, 5), 4), ((4, 12, 3, 5), 12),
          ((2, 64, 8, 8), 32), ((3, 16, 40, 33), 2)]
CASES = [pytest.param(s, g, lay, id=f"{shape_id(s)}-G{g}-{lay}") for s, g in SHAPES for lay in layouts_for_rank(len(s))]


def ref_forward(x, G, w, b, activation, eps=1e-5):
    y, _, _ = ref_group_norm(x, G, w, b, eps)
    return TORCH_ACTIVATIONS[activation](y)


def ref_backward(x, G, w, b, dy, activation, eps=1e-5):
    """fp64 gradients of act(group_norm(x)) for (x, w, b), None where absent."""
    leaves = [None if t is None else t.detach().double().requires_grad_() for t in (x, w, b)]
    out = ref_forward(leaves[0], G, leaves[1], leaves[2], activation, eps)
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad(out, present, dy.double()))
    return [None if t is None else next(grads) for t in leaves]


def activation_tol(dtype, grad=False):
    # One more rounding (the activation's) than the plain op on top of the normalized value; the
    # derivatives of these activations are at most ~1.13, so errors do not grow through them.
    t = dict(tol(dtype, grad))
    if dtype in LOW_PRECISION:
        t = dict(atol=2 * t["atol"], rtol=2 * t["rtol"])
    return t


# On CUDA the activation is ATen's op around the kernels that test_cuda.py covers shape by shape:
# a few shapes per layout there.
CUDA_CASES = [pytest.param(s, g, lay, id=f"{shape_id(s)}-G{g}-{lay}")
              for s, g in [((2, 6, 7), 2), ((2, 12, 5, 3), 4), ((1, 8, 3, 4, 5), 4), ((2, 64, 8, 8), 32)]
              for lay in layouts_for_rank(len(s)) if lay in DENSE_LAYOUTS]


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,G,layout", CASES)
def test_forward_and_backward_match_reference(shape, G, layout, dtype, activation):
    check_against_reference(shape, G, layout, dtype, activation, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("shape,G,layout", CUDA_CASES)
def test_cuda_forward_and_backward_match_reference(shape, G, layout, dtype, activation):
    check_against_reference(shape, G, layout, dtype, activation, "cuda")


def check_against_reference(shape, G, layout, dtype, activation, device):
    x = make_input(shape, dtype, layout, device=device, requires_grad=True)
    w, b = make_affine(shape[1], dtype, device=device, requires_grad=True)
    dy = make_grad_out(shape, dtype, layout, device=device)
    y = groupnorm_ext.group_norm(x, G, w, b, 1e-5, activation)
    assert y.dtype == dtype and y.shape == x.shape
    if layout in DENSE_LAYOUTS:
        assert_memory_format_preserved(y, x)
    ref = ref_forward(x.detach().cpu(), G, w.detach().cpu(), b.detach().cpu(), activation)
    torch.testing.assert_close(y.detach().cpu().double(), ref,
                               **forward_tol(dtype, x.detach().cpu(), G, w.detach().cpu()))
    grads = torch.autograd.grad(y, (x, w, b), dy)
    refs = ref_backward(x.cpu(), G, w.cpu(), b.cpu(), dy.cpu(), activation)
    for name, got, want in zip(("grad_input", "grad_weight", "grad_bias"), grads, refs):
        assert got.dtype == dtype, name
        torch.testing.assert_close(got.cpu().double(), want, **activation_tol(dtype, grad=True), msg=name)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("affine", ["both", "weight_only", "bias_only", "none"])
@pytest.mark.parametrize("dtype,param_dtype", [
    (torch.float16, torch.float16), (torch.float64, torch.float64), (torch.bfloat16, torch.float32),
    (torch.float16, torch.float32)], ids=["float16", "float64", "bf16_f32", "f16_f32"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_backward_values_for_every_dtype_and_affine(activation, layout, dtype, param_dtype, affine, device):
    """The activation backward's values (the dL/dz pass, then the plain backward) for the dtypes
    and affine cases the reference tests above leave out: float16 and float64, low-precision
    input with float32 parameters, weight only, bias only, none; a vectorized shape (C * S a
    multiple of every vector width) and one that is not."""
    for shape, G in (((2, 16, 6, 4), 4), ((2, 6, 5, 3), 3)):
        x = make_input(shape, dtype, layout, device=device, requires_grad=True)
        w, b = make_affine(shape[1], param_dtype, device=device, requires_grad=True)
        w = w if affine in ("both", "weight_only") else None
        b = b if affine in ("both", "bias_only") else None
        dy = make_grad_out(shape, dtype, layout, device=device)
        y = groupnorm_ext.group_norm(x, G, w, b, 1e-5, activation)
        leaves = [t for t in (x, w, b) if t is not None]
        grads = torch.autograd.grad(y, leaves, dy)
        refs = [r for r in ref_backward(x.detach().cpu(), G, None if w is None else w.detach().cpu(),
                                        None if b is None else b.detach().cpu(), dy.cpu(), activation) if r is not None]
        for got, want, leaf in zip(grads, refs, leaves):
            assert got.dtype == leaf.dtype
            torch.testing.assert_close(got.cpu().double(), want, **activation_tol(dtype, grad=True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_without_affine_and_with_float32_params(activation, device):
    """No weight / bias, and bfloat16 input with float32 parameters (the mixed-precision case)."""
    shape, G = (2, 16, 6, 5), 4
    x = make_input(shape, torch.float32, device=device, requires_grad=True)
    dy = make_grad_out(shape, torch.float32, device=device)
    y = groupnorm_ext.group_norm(x, G, None, None, 1e-5, activation)
    torch.testing.assert_close(y.cpu().double(), ref_forward(x.detach().cpu(), G, None, None, activation),
                               **forward_tol(torch.float32, x.detach().cpu(), G))
    gx, = torch.autograd.grad(y, x, dy)
    torch.testing.assert_close(gx.cpu().double(), ref_backward(x.cpu(), G, None, None, dy.cpu(), activation)[0],
                               **activation_tol(torch.float32, grad=True))
    xb = make_input(shape, torch.bfloat16, "channels_last", device=device, requires_grad=True)
    w, b = make_affine(shape[1], torch.float32, device=device, requires_grad=True)
    yb = groupnorm_ext.group_norm(xb, G, w, b, 1e-5, activation)
    assert yb.dtype == torch.bfloat16
    torch.testing.assert_close(yb.cpu().double(), ref_forward(xb.detach().cpu(), G, w.detach().cpu(), b.detach().cpu(),
                                                              activation), **activation_tol(torch.bfloat16))
    grads = torch.autograd.grad(yb, (xb, w, b), make_grad_out(shape, torch.bfloat16, "channels_last", device=device))
    assert [g.dtype for g in grads] == [torch.bfloat16, torch.float32, torch.float32]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_matches_torch_composition(activation, layout, device):
    """Against torch's unfused pipeline, act(F.group_norm(x)), in float32: values and gradients."""
    shape, G = (4, 32, 9, 11), 8
    x = make_input(shape, torch.float32, layout, device=device, requires_grad=True)
    w, b = make_affine(shape[1], torch.float32, device=device, requires_grad=True)
    dy = make_grad_out(shape, torch.float32, layout, device=device)
    ours = groupnorm_ext.group_norm(x, G, w, b, 1e-5, activation)
    theirs = TORCH_ACTIVATIONS[activation](F.group_norm(x, G, w, b, 1e-5))
    torch.testing.assert_close(ours, theirs, atol=2e-5, rtol=1e-5)
    for got, want in zip(torch.autograd.grad(ours, (x, w, b), dy), torch.autograd.grad(theirs, (x, w, b), dy)):
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("activation", ACTIVATIONS)
@pytest.mark.parametrize("shape,G", [((2, 6, 5), 3), ((2, 4, 3, 3), 2)])
def test_gradcheck_and_gradgradcheck(activation, shape, G):
    torch.manual_seed(3)
    x = (torch.randn(shape, dtype=torch.float64) * 2 + 0.5).requires_grad_()
    w = (torch.randn(shape[1], dtype=torch.float64) + 1).requires_grad_()
    b = torch.randn(shape[1], dtype=torch.float64).requires_grad_()
    if activation == "relu":
        # relu is not differentiable at 0: keep every pre-activation a finite-difference step away
        z = groupnorm_ext.group_norm(x.detach(), G, w.detach(), b.detach(), 1e-5)
        assert z.abs().min() > 1e-3

    def fn(x, w, b):
        return groupnorm_ext.group_norm(x, G, w, b, 1e-5, activation)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_double_backward_matches_torch(activation):
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    w, b = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    results = []
    for f in (lambda *a: groupnorm_ext.group_norm(*a, 1e-5, activation),
              lambda x, G, w, b: TORCH_ACTIVATIONS[activation](F.group_norm(x, G, w, b, 1e-5))):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = f(xs, 3, ws, bs)
        gx, = torch.autograd.grad((y * y.detach().sin()).sum(), xs, create_graph=True)
        results.append(torch.autograd.grad((gx * gx).sum(), (xs, ws, bs)))
    for got, want in zip(*results):
        torch.testing.assert_close(got, want, atol=1e-9, rtol=1e-9)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_opcheck(activation):
    x = make_input((2, 8, 5, 3), torch.float32, "channels_last", requires_grad=True)
    w, b = make_affine(8, torch.float32, requires_grad=True)
    torch.library.opcheck(ops.group_norm, (x, 4, w, b, 1e-5, activation))
    torch.library.opcheck(ops.group_norm_forward, (x.detach(), 4, w.detach(), b.detach(), 1e-5, activation))
    out, mean, rstd = ops.group_norm_forward(x.detach(), 4, w.detach(), b.detach(), 1e-5, activation)
    dy = torch.randn_like(out)
    torch.library.opcheck(ops.group_norm_backward,
                          (dy, x.detach(), mean, rstd, w.detach(), b.detach(), 4, activation, [True, True, True]))


@pytest.mark.parametrize("activation,backend", [("silu", "inductor"), ("gelu_tanh", "aot_eager")])
def test_compile_fullgraph(activation, backend):
    torch._dynamo.reset()
    x = make_input((2, 8, 6, 6), torch.float32, requires_grad=True)
    w, b = make_affine(8, torch.float32, requires_grad=True)

    def f(x, w, b):
        return groupnorm_ext.group_norm(x, 4, w, b, 1e-5, activation) * 2

    compiled = torch.compile(f, fullgraph=True, backend=backend)
    y, y_ref = compiled(x, w, b), f(x, w, b)
    torch.testing.assert_close(y, y_ref)
    dy = torch.randn_like(y)
    for got, want in zip(torch.autograd.grad(y, (x, w, b), dy), torch.autograd.grad(y_ref, (x, w, b), dy)):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_torch_func_transforms(activation):
    """torch.func runs ATen's group_norm and activation (autograd.Function cannot join): grad,
    jvp and vmap give the composition's values."""
    x = torch.randn(3, 2, 4, 5, dtype=torch.float64)
    w, b = torch.randn(4, dtype=torch.float64), torch.randn(4, dtype=torch.float64)

    def ours(x):
        return groupnorm_ext.group_norm(x, 2, w, b, 1e-5, activation)

    def theirs(x):
        return TORCH_ACTIVATIONS[activation](F.group_norm(x, 2, w, b, 1e-5))

    x0, t = x[0], torch.randn_like(x[0])  # (N, C, L) = (2, 4, 5); vmap maps over x's first dim
    torch.testing.assert_close(torch.func.jvp(ours, (x0,), (t,)), torch.func.jvp(theirs, (x0,), (t,)))
    torch.testing.assert_close(torch.func.grad(lambda x: ours(x).square().sum())(x0),
                               torch.func.grad(lambda x: theirs(x).square().sum())(x0))
    torch.testing.assert_close(torch.func.vmap(ours)(x), torch.func.vmap(theirs)(x))


@pytest.mark.parametrize("device", DEVICES)
def test_non_finite_and_extreme_values(device):
    """NaN stays in its group; far tails give torch's values (silu and gelu of a large negative z
    are -0 or tiny, never NaN); relu passes NaN and -0 through as torch.relu does."""
    x = make_input((2, 8, 4, 4), torch.float32, device=device)
    x[0, 0, 1, 1] = float("nan")  # group (0, 0)
    w = torch.full((8,), 100.0, device=device)  # z up to ~+-300: exp overflows in the tails
    b = torch.zeros(8, device=device)
    for activation in ACTIVATIONS:
        y = groupnorm_ext.group_norm(x, 4, w, b, 1e-5, activation)
        assert torch.isnan(y[0, :2]).all(), activation
        torch.testing.assert_close(y[0, 2:], TORCH_ACTIVATIONS[activation](F.group_norm(x, 4, w, b))[0, 2:],
                                   atol=1e-4, rtol=1e-5)
        assert torch.isfinite(y[1]).all(), activation


@pytest.mark.parametrize("device", DEVICES)
def test_relu_backward_selects_as_torch(device):
    """relu's backward passes dy where z > 0 and gives 0 elsewhere, Inf or NaN dy included (a
    product dy * 0 would give NaN), as torch's threshold_backward: non-finite upstream gradients
    on the flat side leave every gradient finite and equal to torch's."""
    x = make_input((2, 8, 4, 4), torch.float32, device=device, requires_grad=True)
    w, b = make_affine(8, torch.float32, device=device, requires_grad=True)
    flat = F.group_norm(x.detach(), 4, w.detach(), b.detach()) <= 0
    assert 0 < flat.sum() < flat.numel()
    dy = make_grad_out((2, 8, 4, 4), torch.float32, device=device)
    dy[flat] = float("inf")
    dy[flat & (torch.arange(16, device=device).reshape(4, 4) % 3 == 0)] = float("nan")
    ours = torch.autograd.grad(groupnorm_ext.group_norm(x, 4, w, b, 1e-5, "relu"), (x, w, b), dy)
    theirs = torch.autograd.grad(F.relu(F.group_norm(x, 4, w, b)), (x, w, b), dy)
    for got, want in zip(ours, theirs):
        assert torch.isfinite(want).all() and torch.isfinite(got).all()
        torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_module(activation):
    torch.manual_seed(5)
    m = groupnorm_ext.GroupNorm(4, 8, activation=activation)
    ref = torch.nn.GroupNorm(4, 8)
    ref.load_state_dict(m.state_dict())
    with torch.no_grad():
        m.weight.uniform_(0.5, 1.5)
        m.bias.uniform_(-0.5, 0.5)
        ref.load_state_dict(m.state_dict())
    x = torch.randn(2, 8, 5, 5)
    torch.testing.assert_close(m(x), TORCH_ACTIVATIONS[activation](ref(x)))
    assert f"activation={activation!r}" in repr(m)
    scripted = torch.jit.script(m)
    torch.testing.assert_close(scripted(x), m(x))


def test_module_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation 'swish'"):
        groupnorm_ext.GroupNorm(4, 8, activation="swish")
    with pytest.raises(TypeError, match="activation"):
        groupnorm_ext.GroupNorm(4, 8, activation=torch.nn.SiLU())


# The CPU backward forms dL/dz piece by piece just before its sums read each piece
# (cpu/activation_grad.h); every schedule cuts the tensor differently, and without grad_input the
# split schedule runs. Shapes that take each (2 threads; schedule.h, group_norm_backward.cpp):
SCHEDULE_CASES = [
    ((4, 8, 8, 8), 4, "contiguous"),       # fused, small slabs batched
    ((2, 8, 64, 64), 2, "contiguous"),     # fused, whole rows
    ((2, 4, 128, 130), 2, "contiguous"),   # fused, several chunks per row
    ((1, 6, 40, 40), 3, "contiguous"),     # split (3 slabs do not balance 2 threads)
    ((2, 16, 24, 24), 4, "channels_last"),  # fused, per sample
    ((3, 16, 24, 24), 4, "channels_last"),  # split
]


@pytest.mark.parametrize("mask", [(True, True, True), (False, True, True), (True, False, False)], ids=str)
@pytest.mark.parametrize("activation", ["silu", "relu"])
@pytest.mark.parametrize("shape,G,layout", SCHEDULE_CASES, ids=str)
def test_backward_schedules_and_output_masks(shape, G, layout, activation, mask):
    x = make_input(shape, torch.float32, layout, seed=90)
    w, b = make_affine(shape[1], torch.float32, seed=91)
    dy = make_grad_out(shape, torch.float32, layout, seed=92)
    _, mean, rstd = ops.group_norm_forward(x, G, w, b, 1e-5, activation)
    got = ops.group_norm_backward(dy, x, mean, rstd, w, b, G, activation, list(mask))
    expected = ref_backward(x, G, w, b, dy, activation)
    for wanted, g, e in zip(mask, got, expected):
        if not wanted:
            assert g is None
            continue
        torch.testing.assert_close(g.double(), e, **activation_tol(torch.float32, grad=True))
