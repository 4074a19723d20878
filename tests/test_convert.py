"""convert_group_norm: every nn.GroupNorm of a model swapped for ours, parameters shared, outputs and
gradients unchanged, state_dict keys unchanged, scriptable afterwards."""
import copy

import pytest
import torch
from torch import nn

import groupnorm_ext
from reference import make_input, torch_group_norm


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU())
        self.blocks = nn.ModuleList([nn.Sequential(nn.Conv2d(16, 16, 3, padding=1), nn.GroupNorm(8, 16, eps=1e-6))
                                     for _ in range(2)])
        self.heads = nn.ModuleDict({"plain": nn.GroupNorm(2, 16, affine=False),
                                    "no_bias": torch_group_norm(4, 16, bias=False)})
        self.norm_out = nn.GroupNorm(16, 16)

    def forward(self, x):
        x = self.stem(x)
        for b in self.blocks:
            x = x + b(x)
        return self.norm_out(self.heads["no_bias"](self.heads["plain"](x)))


def _randomize(model):
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-1, 1)


def test_convert_swaps_every_group_norm_and_keeps_results():
    torch.manual_seed(0)
    ref = Net()
    _randomize(ref)
    model = copy.deepcopy(ref)
    params_before = dict(model.named_parameters())
    groupnorm_ext.convert_group_norm(model)
    kinds = [type(m) for m in model.modules()]
    assert nn.GroupNorm not in kinds and kinds.count(groupnorm_ext.GroupNorm) == 6
    assert repr(model) == repr(ref)  # every configuration kept, bias=False included
    # the same Parameter objects: an optimizer made before the swap still trains them
    assert all(p is params_before[n] for n, p in model.named_parameters())
    assert list(model.state_dict()) == list(ref.state_dict())
    assert model.blocks[0][1].eps == 1e-6 and not model.heads["plain"].affine
    x = make_input((2, 3, 9, 7), seed=1)
    out, out_ref = model(x), ref(x)
    torch.testing.assert_close(out, out_ref, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    out_ref.square().sum().backward()
    grads_ref = dict(ref.named_parameters())
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads_ref[n].grad, atol=1e-4, rtol=1e-4, msg=n)


@pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated:FutureWarning")
def test_convert_keeps_training_mode_dtype_and_scripts():
    model = nn.Sequential(nn.Conv2d(3, 8, 1), nn.GroupNorm(2, 8)).double().eval()
    groupnorm_ext.convert_group_norm(model)
    assert not model[1].training and model[1].weight.dtype == torch.float64
    scripted = torch.jit.script(model)
    x = make_input((1, 3, 4, 4), torch.float64, seed=2)
    torch.testing.assert_close(scripted(x), model(x))


def test_convert_a_bare_group_norm_returns_the_replacement():
    norm = nn.GroupNorm(3, 6)
    new = groupnorm_ext.convert_group_norm(norm)
    assert type(new) is groupnorm_ext.GroupNorm and new.weight is norm.weight


def test_convert_leaves_subclasses_alone():
    class MyNorm(nn.GroupNorm):
        def forward(self, x):
            return super().forward(x) * 2

    model = nn.Sequential(MyNorm(2, 4))
    groupnorm_ext.convert_group_norm(model)
    assert type(model[0]) is MyNorm


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_convert_cuda_model():
    model = Net().cuda()
    ref = copy.deepcopy(model)
    groupnorm_ext.convert_group_norm(model)
    x = make_input((2, 3, 8, 8), seed=3, device="cuda")
    torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)


class SequentialNet(nn.Module):
    """GroupNorm + activation pairs in Sequentials (fusable), and ones that must stay apart."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(3, 16, 3, padding=1), nn.GroupNorm(4, 16), nn.SiLU(),
            nn.Sequential(nn.GroupNorm(8, 16), nn.ReLU(inplace=True)),
            nn.GroupNorm(2, 16), nn.GELU(approximate="tanh"),
            nn.GroupNorm(4, 16, affine=False), nn.GELU(),
            nn.GroupNorm(4, 16), nn.Tanh(),     # no fused form: stays apart
            nn.SiLU(), nn.GroupNorm(16, 16),    # activation before the norm: nothing to fuse
        )
        self.norm = nn.GroupNorm(4, 16)         # an attribute: its activation is in forward()
        self.act = nn.SiLU()

    def forward(self, x):
        return self.act(self.norm(self.body(x)))


def test_convert_fuses_activations_in_sequentials():
    torch.manual_seed(0)
    ref = SequentialNet()
    _randomize(ref)
    model = copy.deepcopy(ref)
    params_before = dict(model.named_parameters())
    groupnorm_ext.convert_group_norm(model, fuse_activations=True)
    body = model.body
    assert [getattr(m, "activation", "-") for m in (body[1], body[3][0], body[4], body[6], body[8], body[11])] == \
        ["silu", "relu", "gelu_tanh", "gelu", None, None]
    assert [type(body[i]) for i in (2, 5, 7)] == [nn.Identity] * 3 and type(body[3][1]) is nn.Identity
    assert type(body[9]) is nn.Tanh and type(body[10]) is nn.SiLU
    assert model.norm.activation is None and type(model.act) is nn.SiLU
    assert all(p is params_before[n] for n, p in model.named_parameters())
    assert list(model.state_dict()) == list(ref.state_dict())
    # Against the unfused model in float64: through six norms (a relu among them, whose mask flips
    # where z rounds across 0) float32 gradients, ours and torch's alike, are off by up to ~4e-4
    # of the largest, and ours stay closer to float64 than those.
    ref64 = copy.deepcopy(ref).double()
    x = make_input((2, 3, 9, 7), seed=1)
    out, out_ref = model(x), ref64(x.double())
    torch.testing.assert_close(out.double(), out_ref, atol=1e-5, rtol=1e-5)
    out.square().sum().backward()
    out_ref.square().sum().backward()
    grads_ref = dict(ref64.named_parameters())
    for n, p in model.named_parameters():
        want = grads_ref[n].grad
        torch.testing.assert_close(p.grad.double(), want, atol=1e-3 * want.abs().max().item(), rtol=1e-4, msg=n)


def test_convert_does_not_fuse_by_default_or_across_hooks():
    model = groupnorm_ext.convert_group_norm(nn.Sequential(nn.GroupNorm(2, 4), nn.SiLU()))
    assert model[0].activation is None and type(model[1]) is nn.SiLU
    seen = []
    hooked = nn.Sequential(nn.GroupNorm(2, 4), nn.SiLU(), nn.GroupNorm(2, 4), nn.SiLU())
    hooked[0].register_forward_hook(lambda m, i, o: seen.append(o))   # must see the norm's own output
    hooked[3].register_forward_hook(lambda m, i, o: seen.append(o))   # must still be called
    groupnorm_ext.convert_group_norm(hooked, fuse_activations=True)
    assert hooked[0].activation is None and type(hooked[1]) is nn.SiLU
    assert hooked[2].activation is None and type(hooked[3]) is nn.SiLU
    hooked(torch.randn(2, 4, 3))
    assert len(seen) == 2
