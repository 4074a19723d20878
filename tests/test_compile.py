"""torch.compile(fullgraph=True): the ops trace without graph breaks (fake kernels + autograd) and the compiled
model matches eager, forward and backward. Few compiles: each costs seconds on CPU."""
import pytest
import torch

import groupnorm_ext
from reference import make_input, tol


class ConvNormSum(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.norm = groupnorm_ext.GroupNorm(4, 8)
        with torch.no_grad():  # non-trivial affine parameters, so their gradients are not all alike
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return (self.norm(self.conv(x)) ** 2).sum()


def grads_of(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def test_inductor_fullgraph_forward_backward_matches_eager():
    torch.manual_seed(0)
    eager = ConvNormSum()
    compiled_model = ConvNormSum()
    compiled_model.load_state_dict(eager.state_dict())
    compiled = torch.compile(compiled_model, backend="inductor", fullgraph=True)
    x = make_input((2, 3, 9, 7), seed=1)

    expected = eager(x)
    expected.backward()
    got = compiled(x)
    got.backward()

    torch.testing.assert_close(got, expected, atol=1e-3, rtol=1e-5)
    g_eager, g_comp = grads_of(eager), grads_of(compiled_model)
    assert g_eager.keys() == g_comp.keys() and "norm.weight" in g_comp
    for name in g_eager:
        torch.testing.assert_close(g_comp[name], g_eager[name], atol=1e-3, rtol=1e-4, msg=lambda m: f"{name}: {m}")


def test_aot_eager_fullgraph_ops_channels_last_and_no_affine():
    # the functional API and the raw ops, traced with fake tensors; one compile covers several call styles
    def fn(x, w, b):
        y1 = groupnorm_ext.group_norm(x, 2, w, b, 1e-5)
        y2 = torch.ops.groupnorm_ext.group_norm(x, 4)
        y3, mean, rstd = torch.ops.groupnorm_ext.group_norm_forward(x.detach(), 2, w.detach(), b.detach(), 1e-5,
                                                                    "identity")
        return y1, y2, y3, mean, rstd

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    x = make_input((2, 8, 5, 3), layout="channels_last", seed=2, requires_grad=True)
    w = torch.linspace(0.5, 1.5, 8, requires_grad=True)
    b = torch.linspace(-1.0, 1.0, 8, requires_grad=True)

    got = compiled(x, w, b)
    expected = fn(x, w, b)
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e, **tol(torch.float32))
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    assert got[3].shape == (2, 2) and got[4].shape == (2, 2)

    gy = torch.randn(x.shape)
    g_got = torch.autograd.grad(got[0] + got[1], (x, w, b), gy)
    g_exp = torch.autograd.grad(expected[0] + expected[1], (x, w, b), gy)
    for g, e in zip(g_got, g_exp):
        torch.testing.assert_close(g, e, **tol(torch.float32, grad=True))


def test_export_with_dynamic_shapes_keeps_the_op(tmp_path):
    """torch.export with dynamic batch and spatial sizes: the graph holds groupnorm_ext.group_norm
    (not a decomposition), and the exported program, also after save / load, matches eager on
    shapes it was not traced with, contiguous and channels_last."""
    from torch.export import Dim, export

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), groupnorm_ext.GroupNorm(4, 8))
    x = make_input((2, 3, 9, 9), seed=95)
    ep = export(model, (x,), dynamic_shapes=({0: Dim("batch"), 2: Dim("h", min=2), 3: Dim("w", min=2)},))
    targets = [str(n.target) for n in ep.graph.nodes if n.op == "call_function"]
    assert "groupnorm_ext.group_norm.default" in targets, targets
    path = tmp_path / "model.pt2"
    torch.export.save(ep, str(path))
    loaded = torch.export.load(str(path)).module()
    for shape, layout in (((3, 3, 12, 7), "contiguous"), ((1, 3, 5, 16), "channels_last")):
        other = make_input(shape, seed=96, layout=layout)
        torch.testing.assert_close(loaded(other), model(other), **tol(torch.float32))
