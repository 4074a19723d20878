"""groupnorm_ext.GroupNorm is a drop-in for torch.nn.GroupNorm: same constructor, attributes, parameters,
initial values, state_dict, repr and output."""
import pytest
import torch

import groupnorm_ext
from reference import make_input, tol, torch_group_norm


def test_attributes_and_init_values():
    m = groupnorm_ext.GroupNorm(4, 8)
    assert isinstance(m, torch.nn.Module)
    assert (m.num_groups, m.num_channels, m.eps, m.affine) == (4, 8, 1e-5, True)
    assert m.activation is None
    assert isinstance(m.weight, torch.nn.Parameter) and isinstance(m.bias, torch.nn.Parameter)
    assert m.weight.shape == (8,) and m.bias.shape == (8,)
    assert m.weight.dtype == torch.float32 and m.weight.requires_grad and m.bias.requires_grad
    torch.testing.assert_close(m.weight.detach(), torch.ones(8), atol=0, rtol=0)
    torch.testing.assert_close(m.bias.detach(), torch.zeros(8), atol=0, rtol=0)
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]


def test_is_an_nn_group_norm_to_code_that_asks():
    """Model code finds norms with isinstance (weight init, weight-decay groups): ours answers as
    nn.GroupNorm does, and such an init loop reaches its parameters."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 1), groupnorm_ext.GroupNorm(4, 8))
    assert isinstance(model[1], torch.nn.GroupNorm)
    for m in model.modules():
        if isinstance(m, torch.nn.GroupNorm):
            torch.nn.init.constant_(m.weight, 0.5)
            torch.nn.init.constant_(m.bias, 0.25)
    x = make_input((2, 3, 5, 5), seed=3)
    ref = torch.nn.GroupNorm(4, 8)
    torch.nn.init.constant_(ref.weight, 0.5)
    torch.nn.init.constant_(ref.bias, 0.25)
    torch.testing.assert_close(model(x), ref(model[0](x)), **tol(torch.float32))


def test_constructor_keywords_match_torch():
    m = groupnorm_ext.GroupNorm(num_groups=2, num_channels=6, eps=1e-3, affine=True)
    assert (m.num_groups, m.num_channels, m.eps, m.affine) == (2, 6, 1e-3, True)
    m = groupnorm_ext.GroupNorm(2, 6, 1e-3, False)  # positional order of nn.GroupNorm
    assert (m.eps, m.affine) == (1e-3, False)


def test_affine_false_has_no_parameters():
    m = groupnorm_ext.GroupNorm(2, 6, affine=False)
    assert m.weight is None and m.bias is None
    assert list(m.parameters()) == []
    assert m.state_dict().keys() == torch.nn.GroupNorm(2, 6, affine=False).state_dict().keys()
    x = make_input((3, 6, 4, 5), seed=1)
    torch.testing.assert_close(m(x), torch.nn.GroupNorm(2, 6, affine=False)(x), **tol(torch.float32))


def test_extra_repr_names_the_hyperparameters():
    m = groupnorm_ext.GroupNorm(4, 8, eps=1e-3)
    r = m.extra_repr()
    for part in ("4", "8", "eps=0.001", "affine=True"):
        assert part in r, f"{part!r} missing from extra_repr {r!r}"
    assert "affine=False" in groupnorm_ext.GroupNorm(4, 8, affine=False).extra_repr()
    assert repr(m).startswith("GroupNorm(")


@pytest.mark.parametrize("kwargs", [{}, {"eps": 1e-3}, {"affine": False}, {"bias": False},
                                    {"affine": False, "bias": False}], ids=str)
def test_repr_is_torchs(kwargs):
    assert repr(groupnorm_ext.GroupNorm(4, 8, **kwargs)) == repr(torch_group_norm(4, 8, **kwargs))


def test_bias_false_keeps_the_weight_and_drops_the_bias_like_torch():
    """nn.GroupNorm(..., bias=False): a weight, no bias; same parameters, state_dict, output and grads."""
    torch.manual_seed(0)
    ref = torch_group_norm(3, 6, bias=False)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
    m = groupnorm_ext.GroupNorm(3, 6, bias=False)
    assert isinstance(m.weight, torch.nn.Parameter) and m.bias is None
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    torch.testing.assert_close(m.weight.detach(), torch.ones(6), atol=0, rtol=0)
    m.load_state_dict(ref.state_dict())  # strict: the same keys
    assert m.state_dict().keys() == ref.state_dict().keys()
    x = make_input((2, 6, 5, 3), seed=2).requires_grad_()
    out, expected = m(x), ref(x)
    torch.testing.assert_close(out, expected, **tol(torch.float32))
    gy = torch.randn_like(out)
    gx, gw = torch.autograd.grad(out, (x, m.weight), gy)
    rx, rw = torch.autograd.grad(expected, (x, ref.weight), gy)
    torch.testing.assert_close(gx, rx, **tol(torch.float32, grad=True))
    torch.testing.assert_close(gw, rw, **tol(torch.float32, grad=True))
    scripted = torch.jit.script(m)
    torch.testing.assert_close(scripted(x), expected, **tol(torch.float32))


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("bias", [True, False])
def test_bias_flag_on_a_torch_whose_group_norm_lacks_it(monkeypatch, affine, bias):
    """Before 2.13 nn.GroupNorm took no bias keyword (the GPU machine's torch 2.11 raised TypeError on
    every GroupNorm(...) of ours): the flag is then applied after the base constructor. The module must
    be the one the keyword builds: parameters, initial values, state_dict keys, repr and output."""
    native = groupnorm_ext.GroupNorm(3, 6, affine=affine, bias=bias)
    monkeypatch.setattr(groupnorm_ext.modules, "_BASE_TAKES_BIAS", False)
    emulated = groupnorm_ext.GroupNorm(3, 6, affine=affine, bias=bias)
    assert [(n, p.tolist()) for n, p in emulated.named_parameters()] == \
        [(n, p.tolist()) for n, p in native.named_parameters()]
    assert emulated.state_dict().keys() == native.state_dict().keys()
    assert repr(emulated) == repr(native)
    x = make_input((2, 6, 5, 3), seed=3)
    torch.testing.assert_close(emulated(x), native(x), atol=0, rtol=0)


def test_bias_is_keyword_only_like_torch():
    if groupnorm_ext.modules._BASE_TAKES_BIAS:
        with pytest.raises(TypeError):
            torch.nn.GroupNorm(2, 4, 1e-5, True, None, None, False)
    # the eighth positional argument is ours: activation
    assert groupnorm_ext.GroupNorm(2, 4, 1e-5, True, None, None, "identity").activation == "identity"
    assert groupnorm_ext.GroupNorm(2, 4, bias=False, activation="identity").bias is None


@pytest.mark.parametrize("affine", [True, False])
def test_state_dict_round_trip_with_nn_groupnorm(affine):
    torch.manual_seed(0)
    ref = torch.nn.GroupNorm(3, 6, affine=affine)
    if affine:
        with torch.no_grad():
            ref.weight.uniform_(0.5, 1.5)
            ref.bias.uniform_(-1, 1)
    m = groupnorm_ext.GroupNorm(3, 6, affine=affine)
    m.load_state_dict(ref.state_dict())  # strict
    assert m.state_dict().keys() == ref.state_dict().keys()
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(m.state_dict()[k], v, atol=0, rtol=0)

    back = torch.nn.GroupNorm(3, 6, affine=affine)
    back.load_state_dict(m.state_dict())
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(back.state_dict()[k], v, atol=0, rtol=0)

    x = make_input((2, 6, 5, 3), seed=2)
    torch.testing.assert_close(m(x), ref(x), **tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape,layout", [((2, 8), "contiguous"), ((2, 8, 9), "contiguous"),
                                          ((2, 8, 5, 3), "channels_last"), ((1, 8, 2, 3, 4), "channels_last_3d")],
                         ids=["rank2", "rank3", "rank4-channels_last", "rank5-channels_last_3d"])
def test_same_output_and_grads_as_nn_groupnorm(shape, layout, dtype):
    torch.manual_seed(0)
    ref = torch.nn.GroupNorm(4, 8, eps=1e-4, dtype=dtype)
    with torch.no_grad():
        ref.weight.uniform_(0.5, 1.5)
        ref.bias.uniform_(-1, 1)
    m = groupnorm_ext.GroupNorm(4, 8, eps=1e-4, dtype=dtype)
    m.load_state_dict(ref.state_dict())
    x = make_input(shape, dtype, layout, seed=3)
    out, expected = m(x), ref(x.contiguous())
    torch.testing.assert_close(out, expected, **tol(dtype))
    if layout != "contiguous":
        assert out.is_contiguous(memory_format=getattr(torch, layout))
    gy = torch.randn(shape, dtype=dtype)
    out.backward(gy)
    expected.backward(gy)
    torch.testing.assert_close(m.weight.grad, ref.weight.grad, **tol(dtype, grad=True))
    torch.testing.assert_close(m.bias.grad, ref.bias.grad, **tol(dtype, grad=True))


def test_eps_is_used():
    x = make_input((2, 4, 3, 3), scale=0.1, offset=0.0, seed=4)
    for eps in (1e-5, 0.1):
        torch.testing.assert_close(groupnorm_ext.GroupNorm(2, 4, eps=eps)(x), torch.nn.GroupNorm(2, 4, eps=eps)(x),
                                   **tol(torch.float32))


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtype_kwarg(dtype):
    m = groupnorm_ext.GroupNorm(2, 4, dtype=dtype)
    assert m.weight.dtype == dtype and m.bias.dtype == dtype
    x = make_input((2, 4, 3), dtype, seed=5)
    assert m(x).dtype == dtype


def test_device_kwarg():
    m = groupnorm_ext.GroupNorm(2, 4, device="cpu")
    assert m.weight.device.type == "cpu"
    m = groupnorm_ext.GroupNorm(2, 4, device=torch.device("meta"))
    assert m.weight.is_meta and m.bias.is_meta and m.weight.shape == (4,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_device_kwarg_cuda_and_to():
    m = groupnorm_ext.GroupNorm(2, 4, device="cuda")
    assert m.weight.is_cuda
    m = groupnorm_ext.GroupNorm(2, 4).to("cuda")
    x = make_input((2, 4, 3), device="cuda", seed=6)
    assert m(x).is_cuda


def test_module_conversion_methods():
    m = groupnorm_ext.GroupNorm(2, 4).double()
    assert m.weight.dtype == torch.float64
    x = make_input((2, 4, 3), torch.float64, seed=7)
    torch.testing.assert_close(m(x), torch.nn.GroupNorm(2, 4).double()(x), **tol(torch.float64))


@pytest.mark.parametrize("G,C", [(3, 8), (4, 6), (5, 4)])
def test_channels_not_divisible_by_groups_raises_value_error(G, C):
    with pytest.raises(ValueError):
        groupnorm_ext.GroupNorm(G, C)
    with pytest.raises(ValueError):  # the same contract as torch
        torch.nn.GroupNorm(G, C)


def test_fx_symbolic_trace_records_one_group_norm_node():
    """torch.fx.symbolic_trace (used by quantization and graph-rewriting tools) goes through the
    module into the functional API, which hands the proxies to __torch_function__ as
    torch.nn.functional.group_norm does: one call_function node, same outputs and gradients."""
    import torch.fx

    model = torch.nn.Sequential(torch.nn.Conv2d(4, 8, 3), groupnorm_ext.GroupNorm(2, 8), torch.nn.SiLU())
    traced = torch.fx.symbolic_trace(model)
    targets = [n.target for n in traced.graph.nodes if n.op == "call_function"]
    assert targets == [groupnorm_ext.group_norm]
    x = make_input((2, 4, 9, 9), torch.float32, seed=71).requires_grad_()
    y_traced, y = traced(x), model(x)
    torch.testing.assert_close(y_traced, y, rtol=0, atol=0)
    dy = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y_traced, x, dy)[0], torch.autograd.grad(y, x, dy)[0],
                               rtol=0, atol=0)


def test_tensor_subclasses_and_torch_function_modes_see_the_call():
    from torch.overrides import TorchFunctionMode

    class Tagged(torch.Tensor):
        pass

    x = make_input((2, 8, 5), torch.float32, seed=72)
    out = groupnorm_ext.group_norm(x.as_subclass(Tagged), 2)
    assert type(out) is Tagged
    torch.testing.assert_close(out.as_subclass(torch.Tensor), torch.nn.functional.group_norm(x, 2))

    class Record(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.funcs = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            self.funcs.append(func)
            return func(*args, **(kwargs or {}))

    with Record() as mode:
        groupnorm_ext.GroupNorm(2, 8)(x)
    assert groupnorm_ext.group_norm in mode.funcs


@pytest.mark.parametrize("input_dtype", [torch.float32, torch.bfloat16])
def test_cpu_autocast_keeps_torchs_dtypes(input_dtype):
    """torch.autocast("cpu") leaves group_norm off its lists: output in the input's dtype, for the
    module and the functional, as torch.nn.GroupNorm."""
    x = make_input((2, 8, 5, 5), input_dtype, seed=93)
    ours, theirs = groupnorm_ext.GroupNorm(2, 8), torch.nn.GroupNorm(2, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        outs = [ours(x), theirs(x), groupnorm_ext.group_norm(x, 4), torch.nn.functional.group_norm(x, 4)]
    assert outs[0].dtype == outs[1].dtype == input_dtype
    assert outs[2].dtype == outs[3].dtype == input_dtype
    torch.testing.assert_close(outs[0], outs[1], **tol(input_dtype))
