"""torch.library.opcheck on every op: schema, fake (meta) kernels, autograd registration, AOT dispatch."""
import pytest
import torch

import groupnorm_ext  # noqa: F401  (registers the ops)
from reference import make_affine, make_grad_out, make_input

ops = torch.ops.groupnorm_ext

CASES = [
    pytest.param((2, 6, 5, 3), 3, "contiguous", True, id="contiguous-affine"),
    pytest.param((2, 6, 5, 3), 2, "channels_last", True, id="channels_last-affine"),
    pytest.param((2, 8, 7), 4, "contiguous", False, id="rank3-no_affine"),
    pytest.param((1, 4, 2, 3, 2), 2, "channels_last_3d", False, id="channels_last_3d-no_affine"),
]


def args_for(shape, G, layout, affine, requires_grad=False):
    x = make_input(shape, torch.float32, layout, seed=1, requires_grad=requires_grad)
    w, b = make_affine(shape[1], torch.float32, seed=2, requires_grad=requires_grad) if affine else (None, None)
    return x, G, w, b


@pytest.mark.parametrize("shape,G,layout,affine", CASES)
def test_opcheck_group_norm(shape, G, layout, affine):
    x, G, w, b = args_for(shape, G, layout, affine, requires_grad=True)
    torch.library.opcheck(ops.group_norm.default, (x, G, w, b, 1e-5, "identity"))


@pytest.mark.parametrize("shape,G,layout,affine", CASES)
def test_opcheck_group_norm_forward(shape, G, layout, affine):
    x, G, w, b = args_for(shape, G, layout, affine)
    torch.library.opcheck(ops.group_norm_forward.default, (x, G, w, b, 1e-5, "identity"))


@pytest.mark.parametrize("mask", [[True, True, True], [True, False, False], [False, True, True]],
                         ids=["111", "100", "011"])
@pytest.mark.parametrize("shape,G,layout,affine", CASES[:3])
def test_opcheck_group_norm_backward(shape, G, layout, affine, mask):
    x, G, w, b = args_for(shape, G, layout, affine)
    _, mean, rstd = ops.group_norm_forward(x, G, w, b, 1e-5, "identity")
    gy = make_grad_out(shape, torch.float32, layout, seed=3)
    torch.library.opcheck(ops.group_norm_backward.default, (gy, x, mean, rstd, w, b, G, "identity", mask))


def test_opcheck_empty_batch():
    x, G, w, b = args_for((0, 6, 5, 3), 3, "contiguous", True)
    torch.library.opcheck(ops.group_norm_forward.default, (x, G, w, b, 1e-5, "identity"))
