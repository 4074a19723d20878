"""Double backward (create_graph=True): the autograd backward then runs on differentiable
ATen ops, checked with gradgradcheck in float64."""
import pytest
import torch

import groupnorm_ext


@pytest.mark.parametrize("shape,G", [((2, 6, 5), 3), ((1, 4, 3, 3), 2), ((2, 4, 2, 3), 4)])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("channels_last", [False, True])
def test_gradgradcheck(shape, G, affine, channels_last):
    torch.manual_seed(0)
    x = torch.randn(shape, dtype=torch.float64) * 2 + 0.5
    if channels_last and x.dim() == 4:
        x = x.to(memory_format=torch.channels_last)
    x.requires_grad_()
    C = shape[1]
    w = (torch.randn(C, dtype=torch.float64) + 1).requires_grad_() if affine else None
    b = torch.randn(C, dtype=torch.float64).requires_grad_() if affine else None
    inputs = (x, w, b) if affine else (x,)

    def fn(*args):
        if affine:
            return groupnorm_ext.group_norm(args[0], G, args[1], args[2], 1e-5)
        return groupnorm_ext.group_norm(args[0], G, None, None, 1e-5)

    assert torch.autograd.gradgradcheck(fn, inputs)


def test_double_backward_matches_torch():
    torch.manual_seed(1)
    x = torch.randn(2, 6, 4, 4, dtype=torch.float64)
    w = torch.randn(6, dtype=torch.float64)
    b = torch.randn(6, dtype=torch.float64)
    grads = []
    for f in (groupnorm_ext.group_norm, torch.nn.functional.group_norm):
        xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
        y = f(xs, 3, ws, bs, 1e-5)
        gx, = torch.autograd.grad((y * y.detach().sin()).sum(), xs, create_graph=True)
        grads.append(torch.autograd.grad(gx.pow(2).sum(), (xs, ws)))
    for ours, ref in zip(*grads):
        torch.testing.assert_close(ours, ref, rtol=1e-9, atol=1e-9)
