"""Bad inputs raise at the boundary, with the exception type and the word the spec promises; edge cases that
are valid (N = 0, low-precision input with float32 affine) do not raise."""
import pytest
import torch

import groupnorm_ext
from reference import make_input

ops = torch.ops.groupnorm_ext


def x6():
    return make_input((2, 6, 4, 3), seed=1)


W6, B6 = torch.ones(6), torch.zeros(6)

# (case id, kwargs for group_norm, word the message must contain)
BAD = [
    ("groups_not_dividing_channels", dict(x=x6(), G=4, w=W6, b=B6), "divisible"),
    ("groups_not_dividing_channels_no_affine", dict(x=x6(), G=5, w=None, b=None), "divisible"),
    ("zero_groups", dict(x=x6(), G=0, w=W6, b=B6), "num groups"),
    ("negative_groups", dict(x=x6(), G=-1, w=W6, b=B6), "num groups"),
    ("negative_groups_dividing", dict(x=x6(), G=-3, w=None, b=None), "num groups"),
    ("weight_too_long", dict(x=x6(), G=3, w=torch.ones(7), b=B6), "weight"),
    ("weight_too_short", dict(x=x6(), G=3, w=torch.ones(3), b=None), "weight"),
    ("bias_too_long", dict(x=x6(), G=3, w=W6, b=torch.zeros(12)), "bias"),
    ("bias_too_short", dict(x=x6(), G=3, w=None, b=torch.zeros(5)), "bias"),
    ("input_1d", dict(x=torch.randn(6), G=3, w=None, b=None), "2 dimensions"),
    ("input_0d", dict(x=torch.tensor(1.5), G=1, w=None, b=None), "2 dimensions"),
    ("integer_input", dict(x=torch.arange(48).reshape(2, 6, 4), G=3, w=None, b=None), "floating"),
    ("int32_input_with_affine", dict(x=torch.ones(2, 6, 4, dtype=torch.int32), G=3, w=W6, b=B6), "floating"),
    ("bool_input", dict(x=torch.ones(2, 6, dtype=torch.bool), G=3, w=None, b=None), "floating"),
]


def call_all_entry_points(x, G, w, b, activation="identity"):
    """Yield zero-argument callables that run each public entry point on the same arguments."""
    yield lambda: ops.group_norm(x, G, w, b, 1e-5, activation)
    yield lambda: ops.group_norm_forward(x, G, w, b, 1e-5, activation)
    yield lambda: groupnorm_ext.group_norm(x, G, w, b, 1e-5, activation)


@pytest.mark.parametrize("case,kwargs,word", BAD, ids=[c[0] for c in BAD])
def test_bad_input_raises(case, kwargs, word):
    for call in call_all_entry_points(kwargs["x"], kwargs["G"], kwargs["w"], kwargs["b"]):
        with pytest.raises(RuntimeError, match=word):
            call()


@pytest.mark.parametrize("activation", ["swish", "Relu", "", "Identity"])
def test_unknown_activation_raises(activation):
    x = x6()
    for call in call_all_entry_points(x, 3, W6, B6, activation):
        with pytest.raises(RuntimeError, match="activation"):
            call()
    _, mean, rstd = ops.group_norm_forward(x, 3, W6, B6, 1e-5, "identity")
    with pytest.raises(RuntimeError, match="activation"):
        ops.group_norm_backward(torch.ones_like(x), x, mean, rstd, W6, B6, 3, activation, [True, True, True])


def test_unknown_activation_in_module():
    x = x6()
    with pytest.raises(ValueError, match="activation"):
        groupnorm_ext.GroupNorm(3, 6, activation="swish")(x)


@pytest.mark.parametrize("x_dtype,w_dtype", [
    (torch.float32, torch.float64), (torch.float64, torch.float32), (torch.float32, torch.float16),
    (torch.float16, torch.bfloat16), (torch.bfloat16, torch.float16), (torch.float16, torch.float64),
], ids=lambda d: str(d)[6:])
def test_affine_dtype_mismatch_raises(x_dtype, w_dtype):
    x = make_input((2, 6, 4), x_dtype, seed=2)
    w = torch.ones(6, dtype=w_dtype)
    with pytest.raises(RuntimeError):
        groupnorm_ext.group_norm(x, 3, w, None)
    with pytest.raises(RuntimeError):
        groupnorm_ext.group_norm(x, 3, None, w)


@pytest.mark.parametrize("x_dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
def test_low_precision_input_with_float32_affine_is_accepted(x_dtype):
    x = make_input((2, 6, 4), x_dtype, seed=3)
    out = groupnorm_ext.group_norm(x, 3, torch.ones(6), torch.zeros(6))
    assert out.dtype == x_dtype
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("shape", [(0, 6), (0, 6, 4), (0, 6, 4, 3), (0, 6, 2, 3, 4)], ids=str)
def test_empty_batch_does_not_raise(shape):
    x = torch.empty(shape)
    out = groupnorm_ext.group_norm(x, 3, W6, B6)
    assert out.shape == shape
    assert groupnorm_ext.GroupNorm(3, 6)(x).shape == shape


def test_errors_surface_through_the_module():
    with pytest.raises(RuntimeError, match="2 dimensions"):
        groupnorm_ext.GroupNorm(1, 6)(torch.randn(6))
    with pytest.raises(RuntimeError, match="weight|bias|channel"):
        groupnorm_ext.GroupNorm(3, 6)(torch.randn(2, 9, 4))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("which", ["weight", "bias"])
def test_affine_on_another_device_raises(which):
    x = make_input((2, 6, 4), device="cuda", seed=4)
    w = torch.ones(6, device="cpu") if which == "weight" else torch.ones(6, device="cuda")
    b = torch.zeros(6, device="cpu") if which == "bias" else torch.zeros(6, device="cuda")
    with pytest.raises(RuntimeError, match="device"):
        groupnorm_ext.group_norm(x, 3, w, b)
    with pytest.raises(RuntimeError, match="device"):
        groupnorm_ext.group_norm(x.cpu(), 3, w.cuda() if which == "weight" else None,
                                 b.cuda() if which == "bias" else None)
