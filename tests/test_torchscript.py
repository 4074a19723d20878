"""TorchScript: the module, the functional and the raw op script, round-trip through jit.save/jit.load, and
train (autograd works inside a scripted graph)."""
from typing import Optional

import pytest
import torch

import groupnorm_ext
from reference import make_input, tol

# TorchScript is deprecated upstream but still a supported entry point of this extension
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:FutureWarning")


class UsesModule(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.norm = groupnorm_ext.GroupNorm(3, 6)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        return self.norm(self.conv(x))


class UsesOp(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.bias = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 6))

    def forward(self, x):
        return torch.ops.groupnorm_ext.group_norm(x, 2, self.weight, self.bias, 1e-5, "identity")


class UsesFunctional(torch.nn.Module):
    bias: Optional[torch.Tensor]

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.linspace(0.5, 1.5, 6))
        self.bias = None  # weight only: the Optional path through the functional

    def forward(self, x):
        return groupnorm_ext.group_norm(x, 3, self.weight, self.bias, 1e-5)


MODELS = [UsesModule, UsesOp, UsesFunctional]


def input_for(model, seed=1, layout="contiguous"):
    C = 3 if isinstance(model, UsesModule) else 6
    return make_input((2, C, 5, 4), seed=seed, layout=layout)


@pytest.mark.parametrize("model_cls", MODELS, ids=lambda c: c.__name__)
def test_script_save_load_same_output(model_cls, tmp_path):
    torch.manual_seed(0)
    model = model_cls()
    scripted = torch.jit.script(model)
    x = input_for(model)
    expected = model(x)
    torch.testing.assert_close(scripted(x), expected, **tol(torch.float32))

    path = tmp_path / f"{model_cls.__name__}.pt"
    torch.jit.save(scripted, str(path))
    loaded = torch.jit.load(str(path))
    torch.testing.assert_close(loaded(x), expected, **tol(torch.float32))
    x_cl = input_for(model, seed=2, layout="channels_last")
    torch.testing.assert_close(loaded(x_cl), model(x_cl), **tol(torch.float32))


def test_script_functional_directly():
    scripted = torch.jit.script(groupnorm_ext.group_norm)
    x = make_input((2, 6, 5), seed=3)
    w = torch.linspace(0.5, 1.5, 6)
    b = torch.linspace(-1.0, 1.0, 6)
    torch.testing.assert_close(scripted(x, 3, w, b, 1e-5), groupnorm_ext.group_norm(x, 3, w, b, 1e-5), atol=0, rtol=0)
    torch.testing.assert_close(scripted(x, 2), groupnorm_ext.group_norm(x, 2), atol=0, rtol=0)


@pytest.mark.parametrize("model_cls", MODELS, ids=lambda c: c.__name__)
def test_scripted_model_trains_like_eager(model_cls, tmp_path):
    torch.manual_seed(0)
    eager = model_cls()
    twin = model_cls()
    twin.load_state_dict(eager.state_dict())
    scripted = torch.jit.script(twin)
    torch.jit.save(scripted, str(tmp_path / "m.pt"))
    loaded = torch.jit.load(str(tmp_path / "m.pt"))

    x = input_for(eager, seed=4)
    target = torch.randn(eager(x).shape)
    opt_e = torch.optim.SGD(eager.parameters(), lr=0.1)
    opt_s = torch.optim.SGD(loaded.parameters(), lr=0.1)
    losses = []
    for _ in range(3):
        for model, opt in ((eager, opt_e), (loaded, opt_s)):
            opt.zero_grad()
            loss = ((model(x) - target) ** 2).mean()
            loss.backward()
            opt.step()
            losses.append(loss.item())
    eager_losses, scripted_losses = losses[0::2], losses[1::2]
    assert scripted_losses[-1] < scripted_losses[0], "training through the scripted model does not reduce the loss"
    torch.testing.assert_close(torch.tensor(scripted_losses), torch.tensor(eager_losses), atol=1e-5, rtol=1e-5)
    for (n, p_e), (_, p_s) in zip(eager.named_parameters(), loaded.named_parameters()):
        torch.testing.assert_close(p_s, p_e, atol=1e-5, rtol=1e-5, msg=lambda m: f"{n}: {m}")


@pytest.mark.parametrize("model_cls", MODELS, ids=lambda c: c.__name__)
def test_trace_records_the_op_and_generalizes(model_cls, tmp_path):
    """torch.jit.trace: the op recorded in the graph, and the trace right on another batch size and
    after a save / load round trip."""
    torch.manual_seed(0)
    model = model_cls()
    x = input_for(model)
    traced = torch.jit.trace(model, (x,))
    assert "groupnorm_ext::group_norm" in str(traced.inlined_graph)
    path = tmp_path / "traced.pt"
    traced.save(str(path))
    loaded = torch.jit.load(str(path))
    other = torch.cat([x, input_for(model, seed=2)])
    torch.testing.assert_close(loaded(other), model(other), rtol=0, atol=0)


def test_trace_prints_no_tracer_warning():
    """Tracing a model with the module in a fresh process (default warning filters) prints no
    TracerWarning: the sizes our shape checks read are silenced as torch silences its own."""
    import subprocess
    import sys

    code = ("import torch, groupnorm_ext\n"
            "m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), groupnorm_ext.GroupNorm(2, 8))\n"
            "torch.jit.trace(m, (torch.randn(2, 3, 5, 5),))\n"
            "torch.jit.trace(lambda x: groupnorm_ext.group_norm(x, 4), (torch.randn(1, 8, 3),))\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert "TracerWarning" not in run.stderr, run.stderr
