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


def test_convert_a_bare_group_norm_converts_it_in_place():
    norm = nn.GroupNorm(3, 6)
    weight = norm.weight
    new = groupnorm_ext.convert_group_norm(norm)
    assert new is norm and type(norm) is groupnorm_ext.GroupNorm and norm.weight is weight
    assert norm.activation is None and "activation" not in repr(norm)


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


def _hooked_norm(calls):
    """An nn.GroupNorm carrying every kind of hook, an extra buffer and an attribute; `calls` records
    which hooks ran."""
    norm = nn.GroupNorm(2, 8)
    norm.register_buffer("running_thing", torch.arange(3.0))
    norm.custom_flag = "kept"
    handles = {
        "forward": norm.register_forward_hook(lambda m, i, o: calls.append("forward")),
        "forward_kwargs": norm.register_forward_hook(lambda m, a, kw, o: calls.append("forward_kwargs"),
                                                     with_kwargs=True),
        "pre_kwargs": norm.register_forward_pre_hook(lambda m, a, kw: calls.append("pre_kwargs"), with_kwargs=True),
        "always": norm.register_forward_hook(lambda m, i, o: calls.append("always"), always_call=True),
        "backward": norm.register_full_backward_hook(lambda m, gi, go: calls.append("backward")),
        "backward_pre": norm.register_full_backward_pre_hook(lambda m, go: calls.append("backward_pre")),
        "state_dict_pre": norm.register_state_dict_pre_hook(lambda m, prefix, keep: calls.append("state_dict_pre")),
        "load_post": norm.register_load_state_dict_post_hook(lambda m, keys: calls.append("load_post")),
    }
    return norm, handles


def test_convert_keeps_hooks_handles_buffers_attributes_and_sharing():
    """Conversion changes the class of each norm object and nothing else: every kind of hook still
    runs (with_kwargs and always_call hooks included), handles taken before still remove them,
    extra buffers stay in the state_dict, attributes stay, and a norm used twice stays one object."""
    calls = []
    norm, handles = _hooked_norm(calls)
    model = nn.Sequential(nn.Conv1d(8, 8, 1), norm, nn.Conv1d(8, 8, 1), norm)
    keys = list(model.state_dict())
    calls.clear()
    groupnorm_ext.convert_group_norm(model)
    assert model[1] is norm and model[3] is norm and type(norm) is groupnorm_ext.GroupNorm
    assert norm.custom_flag == "kept" and list(model.state_dict()) == keys and "1.running_thing" in keys
    x = torch.randn(2, 8, 5, requires_grad=True)
    model(x).sum().backward()
    model.load_state_dict(model.state_dict())
    for kind in ("forward", "forward_kwargs", "pre_kwargs", "always", "backward", "backward_pre", "state_dict_pre",
                 "load_post"):
        assert kind in calls, kind
    for handle in handles.values():
        handle.remove()
    calls.clear()
    model(x).sum().backward()
    model.load_state_dict(model.state_dict())
    assert calls == []


def test_convert_fuses_only_where_nothing_can_tell():
    """No fusion when the norm has hooks on its output or gradient, when the activation has any hook,
    or when the norm object is used elsewhere (that use would get the activation too); the norms are
    converted all the same."""
    def pair():
        return nn.GroupNorm(2, 4), nn.SiLU()

    backward_hooked, act_hooked, shared = pair(), pair(), pair()
    backward_hooked[0].register_full_backward_hook(lambda m, gi, go: None)
    act_hooked[1].register_full_backward_hook(lambda m, gi, go: None)
    free = pair()
    model = nn.Sequential(*backward_hooked, *act_hooked, *shared, *free, shared[0])
    ref = copy.deepcopy(model)
    groupnorm_ext.convert_group_norm(model, fuse_activations=True)
    assert [model[i].activation for i in (0, 2, 4, 6, 8)] == [None, None, None, "silu", None]
    assert [type(model[i]) for i in (1, 3, 5, 7)] == [nn.SiLU, nn.SiLU, nn.SiLU, nn.Identity]
    assert model[8] is model[4]
    x = torch.randn(2, 4, 6)
    torch.testing.assert_close(model(x), ref(x), atol=1e-5, rtol=1e-5)


def test_fusion_leaves_the_norm_object_unfused_for_its_other_references():
    """Fusing puts a new module in the Sequential's slot (over the same Parameters): a norm also
    used outside the converted part, or called directly, still computes the norm alone."""
    gn = nn.GroupNorm(2, 4)
    _randomize(gn)
    model = nn.Sequential(nn.Sequential(gn, nn.SiLU()), nn.Sequential(gn, nn.Conv1d(4, 4, 1)))
    x = torch.randn(2, 4, 6)
    ref, ref_direct = model(x), gn(x)
    groupnorm_ext.convert_group_norm(model[0], fuse_activations=True)
    assert model[0][0] is not gn and model[0][0].activation == "silu" and model[0][0].weight is gn.weight
    assert type(gn) is nn.GroupNorm and model[1][0] is gn
    torch.testing.assert_close(model(x), ref, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(gn(x), ref_direct)
    gn.register_buffer("extra", torch.ones(2))
    gn.tag = "mine"
    alone = nn.Sequential(gn, nn.ReLU())
    groupnorm_ext.convert_group_norm(alone, fuse_activations=True)
    assert alone[0].activation == "relu" and alone[0].tag == "mine" and list(alone.state_dict()) == [
        "0.weight", "0.bias", "0.extra"]
    alone[0].register_forward_hook(lambda *args: None)  # the copy's hooks are its own
    assert not gn._forward_hooks
    torch.testing.assert_close(gn(x), ref_direct)
    torch.testing.assert_close(alone(x), torch.relu(ref_direct))
