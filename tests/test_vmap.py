"""torch.vmap of the op (groupnorm_ext/_vmap.py): one call of our kernels on the folded problem, never
torch's per-sample fallback (a loop over the samples, "There is a performance drop..."; the tests turn
it off so that reaching it raises), with torch's results: the
vmap dimension joins the batch when weight and bias are shared, and the channels (B * G groups) when
they are per-sample (model ensembles)."""
import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, stack_module_state, vmap

import groupnorm_ext
from reference import make_affine, make_input

TORCH_ACT = {"identity": lambda t: t, "silu": F.silu, "gelu": F.gelu}
B, G = 3, 2


def _ours(act):
    return lambda x, w, b: groupnorm_ext.group_norm(x, G, w, b, 1e-5, act)


def _torch(act):
    return lambda x, w, b: TORCH_ACT[act](F.group_norm(x, G, w, b, 1e-5))


def _no_fallback(fn, *args):
    """fn(*args) with torch's per-sample vmap fallback turned off: an op without a batching rule raises."""
    enabled = torch._C._functorch._is_vmap_fallback_enabled()
    torch._C._functorch._set_vmap_fallback_enabled(False)
    try:
        return fn(*args)
    finally:
        torch._C._functorch._set_vmap_fallback_enabled(enabled)


def _stacked(shape, dtype, layout, seed):
    """B samples of `shape` in `layout`, stacked along a new dim 0 (each sample keeps the layout)."""
    xs = [make_input(shape, dtype, layout, seed=seed + i) for i in range(B)]
    x = torch.stack([t.contiguous() for t in xs])
    if layout == "channels_last":  # (B, N, C, H, W) with every sample channels_last
        x = x.permute(0, 1, 3, 4, 2).contiguous().permute(0, 1, 4, 2, 3)
    return x


def _close(got, expected, dtype):
    tol = {torch.float64: (1e-12, 1e-12), torch.float32: (2e-5, 2e-5)}[dtype]
    torch.testing.assert_close(got, expected, rtol=tol[0], atol=tol[1])


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=str)
@pytest.mark.parametrize("act", ["identity", "silu"])
@pytest.mark.parametrize("shape,layout", [((2, 4, 5), "contiguous"), ((2, 6, 3, 4), "channels_last"),
                                          ((1, 4, 2, 3, 3), "contiguous")], ids=str)
def test_vmap_over_the_input_matches_torch(shape, layout, act, dtype):
    x = _stacked(shape, dtype, layout, seed=3)
    w, b = make_affine(shape[1], dtype, seed=4)
    expected = torch.stack([_torch(act)(x[i].contiguous(), w, b) for i in range(B)])
    for in_dim in (0, 1, -1):
        moved = x.movedim(0, in_dim)
        got = _no_fallback(vmap(lambda xi: _ours(act)(xi, w, b), in_dims=in_dim), moved)
        _close(got, expected, dtype)
    got = _no_fallback(vmap(lambda xi: _ours(act)(xi, w, b)), x)
    if layout == "channels_last":  # the folded call keeps the layout: each sample comes out channels_last
        assert got[0].is_contiguous(memory_format=torch.channels_last)
    _close(vmap(lambda xi: _ours(act)(xi, None, None))(x),
           torch.stack([_torch(act)(x[i].contiguous(), None, None) for i in range(B)]), dtype)


@pytest.mark.parametrize("act", ["identity", "gelu"])
@pytest.mark.parametrize("batched", ["x w b", "w b", "w", "b", "x w"])
def test_vmap_with_per_sample_weight_and_bias(batched, act):
    dtype, shape = torch.float64, (2, 4, 3, 3)
    x = _stacked(shape, dtype, "contiguous", seed=5)
    ws = torch.stack([make_affine(shape[1], dtype, seed=10 + i)[0] for i in range(B)])
    bs = torch.stack([make_affine(shape[1], dtype, seed=10 + i)[1] for i in range(B)])
    args = [x if "x" in batched else x[0], ws if "w" in batched else ws[0], bs if "b" in batched else bs[0]]
    in_dims = tuple(0 if name in batched.split() else None for name in ("x", "w", "b"))
    got = _no_fallback(vmap(_ours(act), in_dims=in_dims), *args)
    expected = torch.stack([_torch(act)(*(a[i] if d == 0 else a for a, d in zip(args, in_dims))) for i in range(B)])
    _close(got, expected, dtype)


def test_vmap_of_a_model_ensemble():
    """torch.func's ensembling recipe: stacked parameters of B modules, one vmapped functional_call."""
    models = [groupnorm_ext.GroupNorm(G, 4, activation="silu").double() for _ in range(B)]
    refs = [torch.nn.GroupNorm(G, 4).double() for _ in range(B)]
    for i, (m, r) in enumerate(zip(models, refs)):
        w, b = make_affine(4, torch.float64, seed=20 + i)
        m.weight.data.copy_(w), m.bias.data.copy_(b)
        r.load_state_dict(m.state_dict())
    params, buffers = stack_module_state(models)
    x = make_input((2, 4, 5, 5), torch.float64, seed=21)
    got = _no_fallback(vmap(lambda p, bu, xi: functional_call(models[0], (p, bu), (xi,)), in_dims=(0, 0, None)),
                       params, buffers, x)
    _close(got, torch.stack([F.silu(r(x)) for r in refs]), torch.float64)


def test_nested_and_chunked_vmap():
    x = make_input((2, B, 2, 4, 6), torch.float64, seed=30)
    w, b = make_affine(4, torch.float64, seed=31)
    expected = F.group_norm(x.flatten(0, 2), G, w, b).view(x.shape)
    _close(_no_fallback(vmap(vmap(lambda xi: _ours("identity")(xi, w, b))), x), expected, torch.float64)
    _close(_no_fallback(vmap(lambda xi: _ours("identity")(xi, w, b), chunk_size=2), x[0]), expected[0],
           torch.float64)


def test_gradients_through_vmap():
    x = _stacked((2, 4, 5), torch.float64, "contiguous", seed=40)
    w, b = make_affine(4, torch.float64, seed=41)
    dy = torch.randn_like(x)

    def loss(f, x_, w_):
        return (vmap(lambda xi: f(xi, w_, b))(x_) * dy).pow(2).sum()

    grads = {}
    for name, f in (("ours", _ours("silu")), ("torch", _torch("silu"))):
        xr, wr = x.clone().requires_grad_(), w.clone().requires_grad_()
        # plain autograd over vmap, then torch.func.grad over vmap
        grads[name] = torch.autograd.grad(_no_fallback(loss, f, xr, wr), (xr, wr))
        grads[name + " func.grad"] = _no_fallback(grad(loss, argnums=(1, 2)), f, x, w)
    for key in ("", " func.grad"):
        for got, expected in zip(grads["ours" + key], grads["torch" + key]):
            _close(got, expected, torch.float64)


def test_vmap_errors_name_one_samples_shapes():
    """A bad call raises what it raises outside vmap (about one sample), not about the folded shapes."""
    x = make_input((B, 2, 6, 3), torch.float32, seed=50)
    w = torch.randn(B, 6)
    cases = [
        (lambda: vmap(lambda xi: groupnorm_ext.group_norm(xi, 4))(x), "shape [2, 6, 3] and num_groups=4"),
        (lambda: vmap(lambda wi: groupnorm_ext.group_norm(x[0], 4, wi))(w), "shape [2, 6, 3] and num_groups=4"),
        (lambda: vmap(lambda wi: groupnorm_ext.group_norm(x[0], 2, wi))(torch.randn(B, 5)), "weight of shape [5]"),
        (lambda: vmap(lambda xi: groupnorm_ext.group_norm(xi, 2, None, None, 1e-5, "swish"))(x), "swish"),
    ]
    for call, message in cases:
        with pytest.raises((RuntimeError, ValueError), match=message.replace("[", r"\[").replace("]", r"\]")):
            call()


def test_compiled_vmap():
    x = _stacked((2, 4, 5), torch.float32, "contiguous", seed=60)
    ws = torch.randn(B, 4)
    compiled = torch.compile(vmap(lambda xi, wi: _ours("silu")(xi, wi, None)), backend="aot_eager", fullgraph=True)
    _close(_no_fallback(compiled, x, ws), torch.stack([_torch("silu")(x[i], ws[i], None) for i in range(B)]), torch.float32)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_per_sample_float32_params_with_low_precision_input(layout):
    """bfloat16 input with float32 per-sample weight and bias, as outside vmap (both layouts)."""
    x = _stacked((2, 4, 3, 5), torch.float32, layout, seed=70).to(torch.bfloat16)
    ws = torch.randn(B, 4)
    bs = torch.randn(B, 4)
    got = _no_fallback(vmap(lambda xi, wi, bi: groupnorm_ext.group_norm(xi, G, wi, bi)), x, ws, bs)
    assert got.dtype == torch.bfloat16
    expected = torch.stack([F.group_norm(x[i].float(), G, ws[i], bs[i]) for i in range(B)])
    torch.testing.assert_close(got.float(), expected, atol=3e-2, rtol=2e-2)


def test_vmap_over_zero_samples():
    x = torch.randn(0, 2, 4, 5)
    ws = torch.randn(0, 4)
    assert _no_fallback(vmap(lambda xi: groupnorm_ext.group_norm(xi, G)), x).shape == (0, 2, 4, 5)
    assert _no_fallback(vmap(lambda xi, wi: groupnorm_ext.group_norm(xi, G, wi)), x, ws).shape == (0, 2, 4, 5)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_cuda_vmap(layout):
    """The rule is device-agnostic: the folded call runs the CUDA kernels."""
    x = _stacked((2, 8, 6, 5), torch.float32, layout, seed=80).cuda()
    w, b = (t.cuda() for t in make_affine(8, torch.float32, seed=81))
    ws = torch.randn(B, 8, device="cuda")
    got = _no_fallback(vmap(lambda xi: _ours("silu")(xi, w, b)), x)
    expected = torch.stack([_torch("silu")(x[i].contiguous(), w, b) for i in range(B)])
    _close(got, expected, torch.float32)
    got = _no_fallback(vmap(lambda xi, wi: _ours("identity")(xi, wi, None)), x, ws)
    _close(got, torch.stack([F.group_norm(x[i].contiguous(), G, ws[i]) for i in range(B)]), torch.float32)
