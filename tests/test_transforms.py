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


def _flat(result):
    """The tensors of a (nested) tuple / list result, in order."""
    if isinstance(result, (tuple, list)):
        return [t for r in result for t in _flat(r)]
    return [result]


def _same_as_torch(compute, x):
    """compute(f, x) with f = ours and f = F.group_norm agree. Where torch itself raises (torch 2.13:
    channels_last under vmap and forward-mode AD), ours raises the same exception type or, where it
    can do more than torch (its vmap runs per sample), gives torch's result on the contiguous copy."""
    try:
        expected, torch_error = compute(F.group_norm, x), None
    except Exception as e:  # noqa: BLE001
        torch_error = e
        expected = compute(F.group_norm, x.contiguous())
    try:
        got = compute(groupnorm_ext.group_norm, x)
    except Exception as e:  # noqa: BLE001
        assert torch_error is not None and type(e) is type(torch_error), (e, torch_error)
        return
    got, expected = _flat(got), _flat(expected)
    assert len(got) == len(expected)
    for a, e in zip(got, expected):
        assert a is not None, "a derivative was dropped"
        _close(a, e)


@pytest.mark.parametrize("shape,layout,affine", CASES, ids=str)
def test_forward_mode_ad_carries_the_tangent(shape, layout, affine):
    x, w, b = _data(shape, layout, affine)
    tangent = torch.randn_like(x)

    def primal_and_tangent(f, x):
        with fwAD.dual_level():
            primal, tan = fwAD.unpack_dual(f(fwAD.make_dual(x, tangent), G, w, b))
            return primal, tan

    _same_as_torch(primal_and_tangent, x)


@pytest.mark.parametrize("shape,layout,affine", CASES, ids=str)
def test_func_grad_jacrev_jvp_vjp(shape, layout, affine):
    x, w, b = _data(shape, layout, affine)
    t = torch.randn_like(x)
    dy = torch.randn_like(x)
    transforms = [
        lambda f, x: grad(lambda x_: (f(x_, G, w, b) * dy).pow(2).sum())(x),
        lambda f, x: jacrev(lambda x_: f(x_, G, w, b))(x),
        lambda f, x: jvp(lambda x_: f(x_, G, w, b), (x,), (t,))[1],
        lambda f, x: vjp(lambda x_: f(x_, G, w, b), x)[1](dy)[0],
    ]
    if affine:
        transforms.append(lambda f, x: jacrev(lambda w_: f(x, G, w_, b))(w))
        transforms.append(lambda f, x: hessian(lambda w_: f(x, G, w_, b).pow(3).sum())(w))
    for compute in transforms:
        _same_as_torch(compute, x)


@pytest.mark.parametrize("shape,layout,affine", CASES, ids=str)
def test_per_sample_gradients_and_vmap(shape, layout, affine):
    """vmap(grad(...)) over the batch: the per-sample gradients of Opacus-style training."""
    x, w, b = _data(shape, layout, affine)
    params = (w, b) if affine else ()

    def per_sample(f, x):
        def sample_loss(ps, xi):
            wb = ps if ps else (None, None)
            return f(xi.unsqueeze(0), G, *wb).pow(2).mul(torch.arange(xi.numel(), dtype=xi.dtype).view(xi.shape)).sum()

        return vmap(grad(sample_loss), in_dims=(None, 0))(params, x)

    _same_as_torch(per_sample, x)
    _same_as_torch(lambda f, x: vmap(lambda xi: f(xi, G, w, b))(x.unsqueeze(0).expand(3, *shape)), x)


def test_plain_autograd_keeps_our_kernels():
    x, w, b = _data((2, 4, 5), "contiguous", True)
    y = groupnorm_ext.group_norm(x.requires_grad_(), G, w, b)
    assert "GroupNormFunction" in y.grad_fn.name()


def test_eager_entry_is_the_dispatched_op():
    """The functional API's eager call (_C._group_norm, the typed dispatcher entry) is the same op as
    torch.ops.groupnorm_ext.group_norm for everything below Python: a TorchDispatchMode sees the same
    calls, FakeTensorMode gives the same fake output, the profiler names the op, and results and
    gradients are bitwise equal."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils._python_dispatch import TorchDispatchMode

    class Log(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.ops = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.ops.append(str(func))
            return func(*args, **(kwargs or {}))

    x, w, b = _data((2, 4, 3, 3), "channels_last", True)
    via_ops = lambda x_: torch.ops.groupnorm_ext.group_norm(x_, G, w, b, 1e-5, "identity")  # noqa: E731
    via_api = lambda x_: groupnorm_ext.group_norm(x_, G, w, b, 1e-5)  # noqa: E731
    logs = []
    for f in (via_api, via_ops):
        with Log() as mode:
            f(x)
        logs.append(mode.ops)
    assert logs[0] == logs[1] and any("groupnorm_ext" in op for op in logs[0]), logs
    with FakeTensorMode():
        fake_x = torch.empty(2, 4, 3, 3, dtype=torch.float64).to(memory_format=torch.channels_last)
        fake_w, fake_b = torch.empty(4, dtype=torch.float64), torch.empty(4, dtype=torch.float64)
        fakes = [groupnorm_ext.group_norm(fake_x, G, fake_w, fake_b),
                 torch.ops.groupnorm_ext.group_norm(fake_x, G, fake_w, fake_b, 1e-5, "identity")]
    assert fakes[0].shape == fakes[1].shape and fakes[0].stride() == fakes[1].stride()
    with torch.profiler.profile() as prof:
        via_api(x)
    assert "groupnorm_ext::group_norm" in [e.name for e in prof.events()]
    xs = [x.clone().requires_grad_() for _ in range(2)]
    outs = [f(xi) for f, xi in zip((via_api, via_ops), xs)]
    assert torch.equal(outs[0], outs[1])
    dy = torch.randn_like(outs[0])
    assert torch.equal(torch.autograd.grad(outs[0], xs[0], dy)[0], torch.autograd.grad(outs[1], xs[1], dy)[0])
