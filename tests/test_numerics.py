"""Numerics at the edges: NaN/Inf confined to their group, huge magnitudes (|x| ~ 1e30: no overflow of the
variance), a mean far larger than the standard deviation (no sum/sum-of-squares cancellation), and
constant groups, with eps > 0 and with eps = 0.

Constant groups, the documented result (the same as torch.nn.functional.group_norm):
  * eps > 0: mean = the constant, rstd = 1/sqrt(eps), output = bias (0 without bias): x - mean is 0.
  * eps = 0: mean = the constant (exactly), rstd = +inf, and every output of the group is NaN
    (0 * inf); grad_input of the group is NaN and grad_weight of its channels non-finite (torch: +-inf);
    grad_bias and the other groups are unaffected. That is what torch returns for every dtype (its
    Welford mean of equal values is exact, so x - mean is exactly 0).
"""
import pytest
import torch
import torch.nn.functional as F

import groupnorm_ext
from reference import (GRAD_TOLERANCES, STAT_TOLERANCES, forward_tol, make_affine, make_grad_out,
                       make_input, ref_grads, ref_group_norm, stat_dtype, tol, to_layout)

ops = torch.ops.groupnorm_ext

DTYPES = [pytest.param(d, id=str(d)[6:]) for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16)]


def grads_of(fn, x, G, w, b, gy, eps=1e-5):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, w, b)]
    out = fn(leaves[0], G, leaves[1], leaves[2], eps)
    out.backward(gy)
    return out.detach(), leaves[0].grad, leaves[1].grad, leaves[2].grad


def group_mask(shape, G, n, g):
    """Boolean mask (of `shape`) of the elements of group g of sample n."""
    mask = torch.zeros(shape[0], G, dtype=torch.bool)
    mask[n, g] = True
    per = torch.Size(shape).numel() // (shape[0] * G)
    return mask[..., None].expand(shape[0], G, per).reshape(shape)


# --------------------------------------------------------------------------------------------- NaN / Inf
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_value_poisons_only_its_group(dtype, bad, layout):
    shape, G = (3, 6, 5, 4), 3
    x = make_input(shape, dtype, "contiguous", seed=1)
    x[1, 2, 3, 1] = bad                      # sample 1, channel 2 -> group 1
    x = to_layout(x, layout)
    w, b = make_affine(6, dtype, seed=2)
    poisoned = group_mask(shape, G, 1, 1)

    out, mean, rstd = ops.group_norm_forward(x, G, w, b, 1e-5, "identity")
    problems = []  # collected, so that one report shows every way the result is off
    if not torch.isnan(out[poisoned]).all():
        not_nan = out[poisoned][~torch.isnan(out[poisoned])]
        problems.append(f"every output of the poisoned group must be NaN; {not_nan.numel()} of "
                        f"{int(poisoned.sum())} are not, e.g. {not_nan[:4].tolist()}")
    if not torch.isfinite(out[~poisoned]).all():
        problems.append("NaN/Inf leaked into the outputs of other groups")
    if torch.isfinite(mean[1, 1]):
        problems.append(f"mean of the poisoned group is finite: {mean[1, 1].item()}")
    if not torch.isnan(rstd[1, 1]):
        problems.append(f"rstd of the poisoned group is {rstd[1, 1].item()} (expected NaN, as torch)")
    assert not problems, "; ".join(problems)

    clean = x.clone()
    clean[1, 2, 3, 1] = 0.0
    expected, exp_mean, exp_rstd = ref_group_norm(clean, G, w, b)
    torch.testing.assert_close(out.double()[~poisoned], expected[~poisoned], **forward_tol(dtype, clean, G, w))
    stats_ok = torch.ones(3, G, dtype=torch.bool)
    stats_ok[1, 1] = False
    st = STAT_TOLERANCES[stat_dtype(dtype)]
    torch.testing.assert_close(mean[stats_ok].double(), exp_mean[stats_ok], **st)
    torch.testing.assert_close(rstd[stats_ok].double(), exp_rstd[stats_ok], **st)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")], ids=["nan", "inf"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_non_finite_value_gradients_stay_in_their_group(dtype, bad):
    shape, G = (3, 6, 5, 4), 3
    x = make_input(shape, dtype, "contiguous", seed=3)
    x[1, 2, 3, 1] = bad
    w, b = make_affine(6, dtype, seed=4)
    gy = make_grad_out(shape, dtype, seed=5)
    poisoned = group_mask(shape, G, 1, 1)

    _, gx, gw, gb = grads_of(groupnorm_ext.group_norm, x, G, w, b, gy)
    assert torch.isnan(gx[poisoned]).all(), "grad_input of the poisoned group must be NaN"
    assert torch.isfinite(gx[~poisoned]).all(), "NaN/Inf leaked into grad_input of other groups"
    assert torch.isnan(gw[2:4]).all() and torch.isfinite(gw[[0, 1, 4, 5]]).all(), f"grad_weight {gw.tolist()}"
    assert torch.isfinite(gb).all(), "grad_bias = sum of grad_out does not see x"

    clean = x.clone()
    clean[1, 2, 3, 1] = 0.0
    rx, rw, rb = ref_grads(clean, G, w, b, gy)
    t = tol(dtype, grad=True)
    torch.testing.assert_close(gx.double()[~poisoned], rx[~poisoned], **t)
    torch.testing.assert_close(gb.double(), rb, **t)
    # grad_weight of the clean channels sums the clean groups of every sample
    torch.testing.assert_close(gw.double()[[0, 1, 4, 5]], rw[[0, 1, 4, 5]], **t)


def test_nan_in_one_sample_leaves_other_samples_alone():
    x = make_input((4, 8, 9), torch.float32, seed=6)
    x[2].fill_(float("nan"))
    out = groupnorm_ext.group_norm(x, 2)
    assert torch.isnan(out[2]).all()
    expected, _, _ = ref_group_norm(x[[0, 1, 3]], 2)
    torch.testing.assert_close(out[[0, 1, 3]].double(), expected, **tol(torch.float32))


# ----------------------------------------------------------------------------------------- huge magnitudes
# (dtype, magnitude): values whose square overflows float32 (1e30^2 = 1e60 > 3.4e38) for float32 / bfloat16
# input, which the kernels reduce in float64; float64 input at 1e150 (its variance, 1e300, is still a float64).
# Documented limit: beyond |x| ~ 1e154 the variance of float64 data is not representable in float64 and the
# statistics become non-finite, as torch's.
HUGE = [
    pytest.param(torch.float32, 1e30, id="float32-1e30"),
    pytest.param(torch.bfloat16, 1e30, id="bfloat16-1e30"),
    pytest.param(torch.float32, 1e20, id="float32-1e20"),
    # near the top of float's range, where a float sum of the group overflows (taken again in double)
    pytest.param(torch.float32, 1e36, id="float32-1e36"),
    pytest.param(torch.bfloat16, 1e36, id="bfloat16-1e36"),
    pytest.param(torch.float16, 4e3, id="float16-4e3"),
    pytest.param(torch.float64, 1e30, id="float64-1e30"),
    pytest.param(torch.float64, 1e150, id="float64-1e150"),
]
HUGE_SHAPES = [
    pytest.param((2, 6, 7), 3, "contiguous", id="small-groups"),
    pytest.param((2, 4, 96, 96), 2, "contiguous", id="multi-chunk"),
    pytest.param((2, 4, 96, 96), 2, "channels_last", id="multi-chunk-channels_last"),
    # chunks of few rows over many channels (row order; float16 on F16C sums 16-channel blocks
    # down the rows, then the row loop takes the 8 channels left over)
    pytest.param((2, 1288, 5, 7), 8, "channels_last", id="few-rows-channels_last"),
]


def power_of_two_near(v):
    return 2.0 ** round(torch.tensor(v, dtype=torch.float64).log2().item())


@pytest.mark.parametrize("shape,G,layout", HUGE_SHAPES)
@pytest.mark.parametrize("dtype,magnitude", HUGE)
def test_huge_magnitudes_keep_the_variance(dtype, magnitude, shape, G, layout):
    """x = magnitude * (randn + per-channel shifts): normalized output, mean and rstd right; the reference
    runs on x / 2^k (exact), so that it does not overflow itself."""
    s = power_of_two_near(magnitude)
    base = torch.float64 if dtype == torch.float64 else torch.float32
    z = make_input(shape, base, "contiguous", seed=7)
    x = to_layout((z * s).to(dtype), layout)
    assert torch.isfinite(x).all()
    z = x.double() / s                                     # exactly what the kernel sees, scaled down
    eps = 1e-5
    out, mean, rstd = ops.group_norm_forward(x, G, None, None, eps, "identity")
    exp_out, exp_mean, exp_rstd = ref_group_norm(z, G, None, None, eps / s / s)
    assert torch.isfinite(out).all(), f"non-finite output ({int((~torch.isfinite(out)).sum())} elements)"
    torch.testing.assert_close(out.double(), exp_out, **forward_tol(dtype, z, G, None, eps / s / s))
    st = STAT_TOLERANCES[stat_dtype(dtype)]
    torch.testing.assert_close(mean.double() / s, exp_mean, **st)
    torch.testing.assert_close(rstd.double() * s, exp_rstd, atol=0, rtol=st["rtol"],
                               msg=lambda m: f"rstd * 2^k vs reference (got rstd {rstd.flatten()[:2].tolist()}): {m}")


# The other end: |x| ~ 1e-25, where d^2 falls below float's normal range (1.2e-38) and the float lanes
# some reductions use (moments_impl, sum_dev_rows_impl in loops_forward.cpp) would lose every digit;
# eps = 0 so that the variance itself is what rstd shows.
@pytest.mark.parametrize("shape,G,layout", HUGE_SHAPES)
@pytest.mark.parametrize("dtype,magnitude", [pytest.param(torch.float32, 1e-25, id="float32-1e-25"),
                                             pytest.param(torch.bfloat16, 1e-25, id="bfloat16-1e-25"),
                                             pytest.param(torch.float32, 1e-17, id="float32-1e-17")])
def test_tiny_magnitudes_keep_the_variance(dtype, magnitude, shape, G, layout):
    s = power_of_two_near(magnitude)
    z = make_input(shape, torch.float32, "contiguous", seed=8)
    x = to_layout((z * s).to(dtype), layout)
    z = x.double() / s
    out, mean, rstd = ops.group_norm_forward(x, G, None, None, 0.0, "identity")
    exp_out, exp_mean, exp_rstd = ref_group_norm(z, G, None, None, 0.0)
    st = STAT_TOLERANCES[stat_dtype(dtype)]
    torch.testing.assert_close(rstd.double() * s, exp_rstd, atol=0, rtol=st["rtol"])
    torch.testing.assert_close(mean.double() / s, exp_mean, **st)
    torch.testing.assert_close(out.double(), exp_out, **forward_tol(dtype, z, G, None, 0.0))


@pytest.mark.parametrize("dtype,magnitude", HUGE)
def test_huge_magnitudes_backward(dtype, magnitude):
    shape, G = (2, 6, 5, 7), 3
    s = power_of_two_near(magnitude)
    base = torch.float64 if dtype == torch.float64 else torch.float32
    x = (make_input(shape, base, "contiguous", seed=8) * s).to(dtype)
    w, b = make_affine(6, dtype, seed=9)
    gy = make_grad_out(shape, dtype, seed=10)
    _, gx, gw, gb = grads_of(groupnorm_ext.group_norm, x, G, w, b, gy)
    z = x.double() / s
    rx, rw, rb = ref_grads(z, G, w, b, gy, eps=1e-5 / s / s)     # d/dx = d/dz / s
    t = GRAD_TOLERANCES[dtype]
    assert torch.isfinite(gx).all() and torch.isfinite(gw).all()
    torch.testing.assert_close(gx.double() * s, rx, **t)
    torch.testing.assert_close(gw.double(), rw, **t)
    torch.testing.assert_close(gb.double(), rb, **t)



@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_huge_products_backward_bfloat16(layout):
    """bfloat16 shares float's exponent range, so dy * (x - mean) can pass float's 3.4e38 while every input,
    output and gradient stays representable: the gradient sums (float lanes inside a chunk for 16-bit data)
    must not overflow to inf (they fall back to double)."""
    shape, G = (2, 4, 96, 96), 2
    s, t = 2.0 ** 100, 2.0 ** 33       # |x| ~ 1e30, |dy| ~ 1e10: products ~ 1e40
    x = (make_input(shape, torch.float32, layout, seed=18) * s).to(torch.bfloat16)
    w, b = make_affine(4, torch.bfloat16, seed=19)
    gy0 = make_grad_out(shape, torch.bfloat16, seed=20)
    gy = (gy0.float() * t).to(torch.bfloat16)   # a power of two: exact
    _, gx, gw, gb = grads_of(groupnorm_ext.group_norm, x, G, w, b, gy)
    assert torch.isfinite(gx).all() and torch.isfinite(gw).all() and torch.isfinite(gb).all()
    rx, rw, rb = ref_grads(x.double() / s, G, w, b, gy0, eps=1e-5 / s / s)
    tols = GRAD_TOLERANCES[torch.bfloat16]
    torch.testing.assert_close(gx.double() * s / t, rx, **tols)
    torch.testing.assert_close(gw.double() / t, rw, **tols)
    torch.testing.assert_close(gb.double() / t, rb, **tols)


def test_tiny_products_backward_bfloat16():
    """The other end: |x - mean| ~ 1e-23 and |dy| ~ 1e-23 make every dy * (x - mean) ~ 2e-46, below float's
    denormals, while rstd ~ 1e23 brings the gradients back to ordinary sizes: the gradient sums must
    not lose those products (the float-lane sums of 16-bit data fall back to double), nor may the forward's
    float-lane second pass lose the squared deviations."""
    shape, G = (2, 4, 96, 96), 2
    s, t = 2.0 ** -76, 2.0 ** -76       # ~1.3e-23 each: products ~2e-46, below even float denormals
    x = (make_input(shape, torch.float32, "contiguous", seed=21) * s).to(torch.bfloat16)
    w, b = make_affine(4, torch.bfloat16, seed=22)
    gy0 = make_grad_out(shape, torch.bfloat16, seed=23)
    gy = (gy0.float() * t).to(torch.bfloat16)
    _, gx, gw, gb = grads_of(groupnorm_ext.group_norm, x, G, w, b, gy, eps=0.0)
    _, _, rstd = ops.group_norm_forward(x, G, w, b, 0.0, "identity")
    exp_rstd = (x.double() / s).reshape(2, G, -1).var(-1, unbiased=False).rsqrt()
    torch.testing.assert_close(rstd.double() * s, exp_rstd, atol=0, rtol=1e-5)   # the forward's variance
    rx, rw, rb = ref_grads(x.double() / s, G, w, b, gy0, eps=0.0)
    tols = GRAD_TOLERANCES[torch.bfloat16]
    torch.testing.assert_close(gx.double() * s / t, rx, **tols)
    torch.testing.assert_close(gw.double() / t, rw, **tols)
    torch.testing.assert_close(gb.double() / t, rb, **tols)

# ------------------------------------------------------------------------------------- mean >> std
# (dtype, offset, noise): |mean| / std large enough that sum / sum-of-squares would lose every digit of the
# variance in the accumulation dtype, small enough that the (rounded) input still carries the noise.
SHIFTED = [
    pytest.param(torch.float32, 1e4, 1.0, 1e-4, id="float32-1e4"),
    pytest.param(torch.float16, 1e3, 1.0, 1e-4, id="float16-1e3"),
    pytest.param(torch.bfloat16, 1e3, 10.0, 1e-4, id="bfloat16-1e3"),
    pytest.param(torch.float64, 1e8, 1.0, 1e-8, id="float64-1e8"),
]


@pytest.mark.parametrize("shape,G,layout", [
    pytest.param((2, 6, 7), 3, "contiguous", id="small-groups"),
    pytest.param((2, 8, 64, 65), 4, "contiguous", id="multi-chunk"),
    pytest.param((2, 8, 64, 65), 4, "channels_last", id="multi-chunk-channels_last"),
    pytest.param((2, 1280, 8, 8), 32, "channels_last", id="few-rows-channels_last"),
    pytest.param((1, 2, 40001), 1, "contiguous", id="one-long-group"),
])
@pytest.mark.parametrize("dtype,offset,noise,rstd_rtol", SHIFTED)
def test_mean_much_larger_than_std(dtype, offset, noise, rstd_rtol, shape, G, layout):
    base = torch.float64 if dtype == torch.float64 else torch.float32
    gen = torch.Generator().manual_seed(11)
    x = to_layout((offset + noise * torch.randn(shape, generator=gen, dtype=base)).to(dtype), layout)
    w, b = make_affine(shape[1], dtype, seed=12)
    out, mean, rstd = ops.group_norm_forward(x, G, w, b, 1e-5, "identity")
    exp_out, exp_mean, exp_rstd = ref_group_norm(x, G, w, b)
    assert exp_rstd.max() < 10 / noise, "test set-up: the rounded input lost its noise"
    torch.testing.assert_close(rstd.double(), exp_rstd, atol=0, rtol=rstd_rtol,
                               msg=lambda m: f"variance lost to cancellation? {m}")
    torch.testing.assert_close(mean.double(), exp_mean, atol=0, rtol=STAT_TOLERANCES[stat_dtype(dtype)]["rtol"])
    torch.testing.assert_close(out.double(), exp_out, **forward_tol(dtype, x, G, w))


def test_mean_much_larger_than_std_backward():
    shape, G = (2, 8, 33, 31), 4
    x = 1e4 + torch.randn(shape)
    w, b = make_affine(8, seed=13)
    gy = make_grad_out(shape, seed=14)
    _, gx, gw, gb = grads_of(groupnorm_ext.group_norm, x, G, w, b, gy)
    rx, rw, rb = ref_grads(x, G, w, b, gy)
    # The saved float32 mean is off by up to half an ulp of 1e4 (4.9e-4): x_hat = (x - mean) * rstd carries
    # that error for a whole group, so grad_weight = sum(dy * x_hat) has a floor of ~ulp(1e4) * rstd * sum|dy|
    # whatever the kernel does (torch's own error is ~3x ours here). Cancellation in the backward sums
    # (sum(dy * x) - mean * sum(dy) in float32) would show far above that.
    ulp = torch.finfo(torch.float32).eps * 1e4
    _, _, rstd = ref_group_norm(x, G)
    gw_atol = 2 * ulp * rstd.max().item() * gy.abs().sum((0, 2, 3)).double()
    torch.testing.assert_close(gx.double(), rx, atol=32 * ulp, rtol=1e-4)
    err = (gw.double() - rw).abs()
    assert (err <= gw_atol).all(), f"grad_weight error {err.tolist()} > {gw_atol.tolist()}"
    torch.testing.assert_close(gb.double(), rb, **tol(torch.float32, grad=True))


# ---------------------------------------------------------------------------------------- constant groups
CONSTANTS = [0.1, 1.0 / 3.0, -7.25, 123.456, 0.0]
GROUP_SIZES = [pytest.param(1, id="S1"), pytest.param(3, id="S3"), pytest.param(1000, id="S1000"),
               pytest.param(20001, id="S20001")]


@pytest.mark.parametrize("S", GROUP_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_group_with_eps_zero(dtype, S):
    """Documented result (module docstring): mean = c exactly, rstd = inf, output NaN -- torch's result."""
    for c in CONSTANTS:
        x = torch.empty(2, 4, S, dtype=dtype)
        x[0].fill_(c)                                         # sample 0: two constant groups
        x[1] = make_input((4, S), dtype, seed=15)             # sample 1: ordinary groups
        w, b = make_affine(4, dtype, seed=16)
        out, mean, rstd = ops.group_norm_forward(x, 2, w, b, 0.0, "identity")
        t_out = F.group_norm(x, 2, w, b, 0.0)
        t_mean_rstd = torch.ops.aten.native_group_norm(x, w, b, 2, 4, S, 2, 0.0)[1:]
        cc = x[0, 0, 0].to(stat_dtype(dtype)).item()
        assert mean[0].tolist() == [cc, cc], f"c={c!r}: mean of a constant group {mean[0].tolist()} != {cc!r}"
        assert rstd[0].tolist() == [float("inf")] * 2, f"c={c!r}: rstd of a constant group {rstd[0].tolist()}"
        assert torch.isnan(out[0]).all(), (
            f"c={c!r}: output of a constant group with eps=0: {out[0].flatten()[:4].tolist()}")
        assert torch.isnan(t_out[0]).all() and torch.isinf(t_mean_rstd[1][0]).all(), "torch's result changed"
        if S > 1:  # the ordinary sample: finite and right
            exp, _, _ = ref_group_norm(x[1:], 2, w, b, 0.0)
            torch.testing.assert_close(out[1:].double(), exp, **forward_tol(dtype, x[1:], 2, w, 0.0))


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_group_with_eps_zero_backward(dtype):
    x = torch.empty(2, 4, 6, dtype=dtype)
    x[0].fill_(0.1)
    x[1] = make_input((4, 6), dtype, seed=17)
    w, b = make_affine(4, dtype, seed=18)
    gy = make_grad_out((2, 4, 6), dtype, seed=19)
    _, gx, gw, gb = grads_of(groupnorm_ext.group_norm, x, 2, w, b, gy, eps=0.0)
    _, tx, tw, tb = grads_of(F.group_norm, x, 2, w, b, gy, eps=0.0)
    assert torch.isnan(gx[0]).all() and torch.isnan(tx[0]).all()
    # every channel has a constant group in sample 0: grad_weight is non-finite (ours NaN, torch +-inf)
    assert not torch.isfinite(gw).any(), f"grad_weight {gw.tolist()}"
    assert not torch.isfinite(tw).any(), "torch's result changed"
    torch.testing.assert_close(gb, tb, **tol(dtype, grad=True))
    rx, _, _ = ref_grads(x[1:], 2, w, b, gy[1:], eps=0.0)
    torch.testing.assert_close(gx[1:].double(), rx, **tol(dtype, grad=True))


@pytest.mark.parametrize("S", GROUP_SIZES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_group_with_eps_positive_gives_bias(dtype, S):
    for c in CONSTANTS:
        x = torch.full((2, 4, S), c, dtype=dtype)
        w, b = make_affine(4, dtype, seed=20)
        out, mean, rstd = ops.group_norm_forward(x, 2, w, b, 1e-5, "identity")
        expected = b.double().reshape(1, 4, 1).expand(2, 4, S)
        torch.testing.assert_close(out.double(), expected, **forward_tol(dtype, x, 2, w))
        torch.testing.assert_close(rstd.double(), torch.full((2, 2), 1e-5 ** -0.5, dtype=torch.float64),
                                   **STAT_TOLERANCES[stat_dtype(dtype)])
        out0 = groupnorm_ext.group_norm(x, 2)                 # no affine: zeros
        assert out0.abs().max().item() <= forward_tol(dtype, x, 2)["atol"]


@pytest.mark.parametrize("dtype", DTYPES)
def test_zero_stride_constant_input(dtype):
    """A scalar expanded to the whole shape (every stride 0) is a constant input."""
    x = torch.tensor(2.5, dtype=dtype).expand(3, 6, 4, 5)
    w, b = make_affine(6, dtype, seed=21)
    out = groupnorm_ext.group_norm(x, 3, w, b)
    torch.testing.assert_close(out.double(), b.double().reshape(1, 6, 1, 1).expand(3, 6, 4, 5),
                               **forward_tol(dtype, x, 3, w))
    xr = x.detach().requires_grad_(True)
    gy = make_grad_out((3, 6, 4, 5), dtype, seed=22)
    groupnorm_ext.group_norm(xr, 3, w, b).backward(gy)
    rx, _, _ = ref_grads(x, 3, w, b, gy)
    # grad_input = rstd * (w * dy - mean(w * dy)) with rstd = 1/sqrt(eps) ~ 316: terms of size 316 * |w * dy|
    scale = 1e-5 ** -0.5 * (w.double().reshape(1, 6, 1, 1) * gy.double()).abs().max().item()
    atol = max(GRAD_TOLERANCES[dtype]["atol"], 32 * torch.finfo(stat_dtype(dtype)).eps * scale)
    torch.testing.assert_close(xr.grad.double(), rx, atol=atol, rtol=GRAD_TOLERANCES[dtype]["rtol"])
