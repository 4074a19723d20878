"""torch.func transforms (grad, jacrev, jvp, hessian, vmap and their compositions) and forward-mode
AD (torch.autograd.forward_ad). A C++ autograd::Function cannot take part in them, so there the op
runs ATen's group_norm (csrc/autograd): every result must equal torch.nn.functional.group_norm's under
the same transform, where before the transforms raised and forward-mode AD silently lost the tangent.
Plain autograd keeps our kernels (checked by the node type)."""
import pytest
import torch
import torch.autograd.forward_ad as fwAD
import torch.nn.functional as F
from torch.func import grad, hessian, jacrev, jvp, vjp, vmap

import groupnorm_ext
from reference import make_affine, make_input

G = 2
CASES = [((2, 4, 5), "contiguous", True), ((2, 4, 3, 3), "channels_last", True), ((3, 6, 4), "contiguous", False)]


def _data(shape, layout, affine):
    x = make_input(shape, torch.float64, layout, seed=81)
    w, b = make_affine(shape[1], torch.float64, seed=82) if affine else (None, None)
    return x, w, b


def _close(ours, theirs):
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shape,layout,affine", CASES, ids=str)
def test_forward_mode_ad_carries_the_tangent(shape, layout, affine):
    x, w, b = _data(shape, layout, affine)
    tangent = torch.randn_like(x)
    results = []
    for f in (groupnorm_ext.group_norm, F.group_norm):
        with fwAD.dual_level():
            primal, tan = fwAD.unpack_dual(f(fwAD.make_dual(x, tangent), G, w, b))
            results.append((primal, tan))
    assert results[0][1] is not None, "the tangent was dropped"
    _close(results[0][0], results[1][0])
    _close(results[0][1], results[1][1])


@pytest.mark.parametrize("shape,layout,affine", CASES, ids=str)
def test_func_grad_jacrev_jvp_vjp(shape, layout, affine):
    x, w, b = _data(shape, layout, affine)
    t = torch.randn_like(x)
    dy = torch.randn_like(x)
    out = {}
    for name, f in (("ours", groupnorm_ext.group_norm), ("torch", F.group_norm)):
        def loss(x_, f=f):
            return (f(x_, G, w, b) * dy).pow(2).sum()

        r = [grad(loss)(x), jacrev(lambda x_, f=f: f(x_, G, w, b))(x), jvp(lambda x_, f=f: f(x_, G, w, b), (x,), (t,))[1],
             vjp(lambda x_, f=f: f(x_, G, w, b), x)[1](dy)[0]]
        if affine:
            r.append(jacrev(lambda w_, f=f: f(x, G, w_, b))(w))
            r.append(hessian(lambda w_, f=f: f(x, G, w_, b).pow(3).sum())(w))
        out[name] = r
    for a, e in zip(out["ours"], out["torch"]):
        _close(a, e)


@pytest.mark.parametrize("shape,layout,affine", CASES, ids=str)
def test_per_sample_gradients_and_vmap(shape, layout, affine):
    """vmap(grad(...)) over the batch: the per-sample gradients of Opacus-style training."""
    x, w, b = _data(shape, layout, affine)
    params = (w, b) if affine else ()
    out = {}
    for name, f in (("ours", groupnorm_ext.group_norm), ("torch", F.group_norm)):
        def sample_loss(ps, xi, f=f):
            wb = ps if ps else (None, None)
            return f(xi.unsqueeze(0), G, *wb).pow(2).mul(torch.arange(xi.numel(), dtype=xi.dtype).view(xi.shape)).sum()

        per_sample = vmap(grad(sample_loss), in_dims=(None, 0))(params, x)
        batched = vmap(lambda xi, f=f: f(xi, G, w, b))(x.unsqueeze(0).expand(3, *shape))
        out[name] = list(per_sample) + [batched]
    for a, e in zip(out["ours"], out["torch"]):
        _close(a, e)


def test_plain_autograd_keeps_our_kernels():
    x, w, b = _data((2, 4, 5), "contiguous", True)
    y = groupnorm_ext.group_norm(x.requires_grad_(), G, w, b)
    assert "GroupNormFunction" in y.grad_fn.name()
