"""Forward numerics: groupnorm_ext.group_norm equals the fp64 reference and torch's F.group_norm for every
rank, group count, layout, dtype and affine combination; mean/rstd from group_norm_forward; memory format;
empty batches."""
import random

import pytest
import torch
import torch.nn.functional as F

import groupnorm_ext
from reference import (FLOAT_DTYPES, LOW_PRECISION, STAT_TOLERANCES, assert_memory_format_preserved,
                       forward_tol, layouts_for_rank, make_affine, make_input, ref_group_norm, shape_id, stat_dtype,
                       tol)

ops = torch.ops.groupnorm_ext

# (shape, num_groups): ranks 2..5, N = 1 and N > 1, odd spatial sizes, G in {1, middle, C}.
SHAPES = [(3, 6), (2, 6, 7), (2, 6, 5, 3), (1, 8, 3, 4, 5), (4, 12, 3, 5), (2, 4, 1, 1)]
SHAPE_GROUPS = [(s, g) for s in SHAPES for g in (1, {6: 3, 8: 4, 12: 4, 4: 2}[s[1]], s[1])]
CASES = [pytest.param(s, g, lay, id=f"{shape_id(s)}-G{g}-{lay}")
         for s, g in SHAPE_GROUPS for lay in layouts_for_rank(len(s))]
DTYPES = [pytest.param(d, id=str(d).replace("torch.", "")) for d in FLOAT_DTYPES]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,G,layout", CASES)
def test_matches_fp64_reference(shape, G, layout, dtype):
    x = make_input(shape, dtype, layout, seed=11)
    w, b = make_affine(shape[1], dtype, seed=12)
    out = groupnorm_ext.group_norm(x, G, w, b, 1e-5)
    assert out.dtype == dtype
    assert out.shape == x.shape
    expected, _, _ = ref_group_norm(x, G, w, b, 1e-5)
    torch.testing.assert_close(out.double(), expected, **forward_tol(dtype, x, G, w))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,G,layout", CASES)
def test_matches_torch_group_norm(shape, G, layout, dtype):
    x = make_input(shape, dtype, layout, seed=21)
    w, b = make_affine(shape[1], dtype, seed=22)
    out = groupnorm_ext.group_norm(x, G, w, b, 1e-5)
    expected = F.group_norm(x.contiguous(), G, w, b, 1e-5)
    assert out.dtype == expected.dtype
    both = {k: 2 * v for k, v in forward_tol(dtype, x, G, w).items()}  # two kernels, two roundings
    torch.testing.assert_close(out.double(), expected.double(), **both)


AFFINE = ["none", "weight_only", "bias_only", "both"]


@pytest.mark.parametrize("affine", AFFINE)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,G,layout", [
    pytest.param((2, 6, 5, 3), 3, "contiguous", id="2x6x5x3-G3-contiguous"),
    pytest.param((2, 6, 5, 3), 2, "channels_last", id="2x6x5x3-G2-channels_last"),
    pytest.param((1, 8, 3, 4, 5), 4, "channels_last_3d", id="1x8x3x4x5-G4-channels_last_3d"),
    pytest.param((3, 6, 7), 3, "strided", id="3x6x7-G3-strided"),
])
def test_affine_variants(shape, G, layout, dtype, affine):
    x = make_input(shape, dtype, layout, seed=31)
    w, b = make_affine(shape[1], dtype, seed=32)
    w = w if affine in ("weight_only", "both") else None
    b = b if affine in ("bias_only", "both") else None
    out = groupnorm_ext.group_norm(x, G, w, b)
    expected, _, _ = ref_group_norm(x, G, w, b)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double(), expected, **tol(dtype))
    torch.testing.assert_close(out, F.group_norm(x, G, w, b).to(dtype), **tol(dtype))


@pytest.mark.parametrize("affine", ["weight_only", "bias_only", "both"])
@pytest.mark.parametrize("dtype", [pytest.param(d, id=str(d)[6:]) for d in LOW_PRECISION])
@pytest.mark.parametrize("shape,G,layout", [c for c in CASES if c.values[0] in [(2, 6, 5, 3), (1, 8, 3, 4, 5), (2, 6, 7)]])
def test_low_precision_input_with_float32_affine(shape, G, layout, dtype, affine):
    x = make_input(shape, dtype, layout, seed=41)
    w, b = make_affine(shape[1], torch.float32, seed=42)
    w = w if affine in ("weight_only", "both") else None
    b = b if affine in ("bias_only", "both") else None
    out = groupnorm_ext.group_norm(x, G, w, b)
    assert out.dtype == dtype, "output dtype must be the input dtype, not the weight dtype"
    expected, _, _ = ref_group_norm(x, G, w, b)
    torch.testing.assert_close(out.double(), expected, **tol(dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,G,layout", [c for c in CASES if c.values[2] in ("contiguous", "channels_last", "channels_last_3d", "permuted")])
def test_forward_op_returns_mean_and_rstd(shape, G, layout, dtype):
    x = make_input(shape, dtype, layout, seed=51)
    w, b = make_affine(shape[1], dtype, seed=52)
    out, mean, rstd = ops.group_norm_forward(x, G, w, b, 1e-5, "identity")
    exp_out, exp_mean, exp_rstd = ref_group_norm(x, G, w, b, 1e-5)
    N = shape[0]
    assert out.dtype == dtype and out.shape == x.shape
    assert mean.shape == (N, G) and rstd.shape == (N, G)
    assert mean.dtype == stat_dtype(dtype) and rstd.dtype == stat_dtype(dtype)
    torch.testing.assert_close(out.double(), exp_out, **forward_tol(dtype, x, G, w))
    torch.testing.assert_close(mean.double(), exp_mean, **STAT_TOLERANCES[stat_dtype(dtype)])
    torch.testing.assert_close(rstd.double(), exp_rstd, **STAT_TOLERANCES[stat_dtype(dtype)])
    # the differentiable op computes the same output
    torch.testing.assert_close(ops.group_norm(x, G, w, b, 1e-5, "identity"), out, **forward_tol(dtype, x, G, w))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,layout", [
    ((2, 6), "contiguous"), ((2, 6, 5), "contiguous"),
    ((2, 6, 5, 3), "contiguous"), ((2, 6, 5, 3), "channels_last"), ((2, 6, 1, 1), "channels_last"),
    ((1, 8, 3, 4, 5), "contiguous"), ((1, 8, 3, 4, 5), "channels_last_3d"), ((2, 8, 1, 2, 1), "channels_last_3d"),
], ids=lambda v: shape_id(v) if isinstance(v, tuple) else None)
def test_output_keeps_memory_format(shape, layout, dtype):
    x = make_input(shape, dtype, layout, seed=61)
    w, b = make_affine(shape[1], dtype, seed=62)
    for out in (groupnorm_ext.group_norm(x, 2, w, b), ops.group_norm_forward(x, 2, w, b, 1e-5, "identity")[0],
                groupnorm_ext.group_norm(x, 2)):
        assert_memory_format_preserved(out, x)


@pytest.mark.parametrize("shape,layout", [
    ((2, 6, 5, 3), "contiguous"), ((2, 6, 5, 3), "channels_last"), ((2, 6, 1, 1), "channels_last"),
    ((2, 6, 1, 4), "channels_last"), ((1, 6, 4, 1), "channels_last"), ((1, 8, 3, 4, 5), "channels_last_3d"),
    ((2, 8, 1, 2, 1), "channels_last_3d"), ((0, 6, 5, 3), "channels_last"),
], ids=lambda v: shape_id(v) if isinstance(v, tuple) else None)
def test_output_strides_are_torchs(shape, layout):
    """The strides themselves, size-1 and size-0 dims included, are those of torch's output, for the
    output and for grad_input (ours are computed, not taken from a permuted view)."""
    x = make_input(shape, torch.float32, layout, seed=63).requires_grad_()
    w, b = make_affine(shape[1], torch.float32, seed=64)
    ours, theirs = groupnorm_ext.group_norm(x, 2, w, b), F.group_norm(x, 2, w, b)
    assert ours.stride() == theirs.stride()
    dy = torch.randn_like(theirs)
    assert torch.autograd.grad(ours, x, dy)[0].stride() == torch.autograd.grad(theirs, x, dy)[0].stride()


def _odd_layouts():
    """(name, input) pairs whose strides torch's suggest_memory_format settles in ways a stride rule
    of our own could get wrong: channels-innermost order at ranks without a channels_last format,
    views torch does not read as channels_last, ambiguous size-1 dims, sliced channels_last."""
    g = torch.Generator().manual_seed(65)

    def randn(*shape):
        return torch.randn(*shape, generator=g)

    return [
        ("rank3_transposed", randn(2, 5, 6).transpose(1, 2)),                 # (N, L, C) -> (N, C, L)
        ("rank3_transposed_unsqueezed", randn(2, 7, 6).permute(0, 2, 1).unsqueeze(-1)),
        ("hwc_image", randn(3, 5, 4).permute(2, 0, 1).unsqueeze(0)),           # (1, C, H, W)
        ("rank6_channels_innermost", randn(2, 3, 4, 2, 3, 6).permute(0, 5, 1, 2, 3, 4)),
        ("n111_channels_last", randn(4, 12, 1, 1).contiguous(memory_format=torch.channels_last)),
        ("c1_channels_last", randn(4, 1, 3, 3).contiguous(memory_format=torch.channels_last)),
        ("n1w1_channels_last", randn(3, 6, 1, 5).contiguous(memory_format=torch.channels_last)),
        ("c1_channels_last_3d", randn(2, 1, 3, 2, 2).contiguous(memory_format=torch.channels_last_3d)),
        ("sliced_channels_last", randn(2, 6, 4, 10).contiguous(memory_format=torch.channels_last)[..., ::2]),
        ("channels_last_permuted_hw", randn(2, 6, 4, 5).contiguous(memory_format=torch.channels_last)
         .transpose(2, 3)),
        ("rank5_channels_innermost_2d_view", randn(2, 3, 4, 6).permute(0, 3, 1, 2).unsqueeze(2)),
        # channels_last with a trailing size-1 dim: torch's C++ rule reads contiguous (some torch
        # releases' Python copy of it, torch._prims_common, read channels_last_3d)
        ("channels_last_unsqueezed", randn(2, 6, 4, 5).contiguous(memory_format=torch.channels_last).unsqueeze(-1)),
        # dense, with a size-1 dim's stride not the standard one: grad_input keeps it, as torch's
        ("odd_size1_stride", randn(100)[:24].as_strided((3, 1, 2, 4), (8, 4, 4, 1))),
        ("odd_size1_stride_channels_last", randn(64)[:24].as_strided((2, 6, 2, 1), (12, 1, 6, 99))),
    ]


@pytest.mark.parametrize("name,x", _odd_layouts(), ids=[n for n, _ in _odd_layouts()])
def test_output_layout_follows_torch_for_any_strides(name, x):
    """Output and grad_input strides are torch's (input.suggest_memory_format(), with torch's
    strides for that format), values too; the fake kernel (torch.compile, export) agrees. A
    channels-innermost (N, C, L) input gives a contiguous output, so out.view(N, -1) works as
    with torch."""
    G = 3 if x.shape[1] % 3 == 0 else 1
    C = x.shape[1]
    w, b = torch.randn(C, dtype=x.dtype), torch.randn(C, dtype=x.dtype)
    xo, xt = x.detach().requires_grad_(), x.detach().requires_grad_()
    ours, theirs = groupnorm_ext.group_norm(xo, G, w, b), F.group_norm(xt, G, w, b)
    assert ours.stride() == theirs.stride(), (name, x.stride())
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    dy = torch.randn_like(theirs)
    go, = torch.autograd.grad(ours, xo, dy)
    gt, = torch.autograd.grad(theirs, xt, dy)
    assert go.stride() == gt.stride(), (name, x.stride())
    torch.testing.assert_close(go, gt, rtol=1e-4, atol=1e-4)
    if theirs.is_contiguous():
        torch.testing.assert_close(ours.view(ours.shape[0], -1), theirs.view(theirs.shape[0], -1),
                                   rtol=1e-5, atol=1e-5)
    _, mean, rstd = ops.group_norm_forward(x, G, w, b, 1e-5, "identity")
    raw = ops.group_norm_backward(dy, x, mean, rstd, w, b, G, "identity", [True, False, False])[0]
    assert raw.stride() == gt.stride()
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake_x, fake_dy = mode.from_tensor(x), mode.from_tensor(dy)
        fake_y, fake_mean, fake_rstd = ops.group_norm_forward(fake_x, G, None, None, 1e-5, "identity")
        assert fake_y.stride() == theirs.stride(), (name, x.stride())
        fake_gx = ops.group_norm_backward(fake_dy, fake_x, fake_mean, fake_rstd, None, None, G, "identity",
                                          [True, False, False])[0]
        assert fake_gx.stride() == gt.stride(), (name, x.stride())


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,layout", [
    ((0, 6), "contiguous"), ((0, 6, 5), "contiguous"), ((0, 6, 5, 3), "contiguous"),
    ((0, 6, 5, 3), "channels_last"), ((0, 8, 2, 3, 4), "channels_last_3d"),
], ids=lambda v: shape_id(v) if isinstance(v, tuple) else None)
def test_empty_batch(shape, layout, dtype):
    x = make_input(shape, dtype, layout)
    w, b = make_affine(shape[1], dtype)
    out = groupnorm_ext.group_norm(x, 3 if shape[1] == 6 else 4, w, b)
    assert out.shape == x.shape and out.dtype == dtype and out.numel() == 0
    out, mean, rstd = ops.group_norm_forward(x, 2, w, b, 1e-5, "identity")
    assert out.shape == x.shape
    assert mean.shape == (0, 2) and rstd.shape == (0, 2)
    assert mean.dtype == stat_dtype(dtype)


@pytest.mark.parametrize("eps", [1e-2, 0.5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_eps_is_honoured(eps, dtype):
    # small variance, so eps changes the answer well beyond the tolerance
    x = make_input((2, 6, 4, 3), dtype, scale=0.1, offset=0.0, seed=71)
    w, b = make_affine(6, dtype, seed=72)
    out = groupnorm_ext.group_norm(x, 3, w, b, eps)
    torch.testing.assert_close(out.double(), ref_group_norm(x, 3, w, b, eps)[0], **tol(dtype))
    _, _, rstd = ops.group_norm_forward(x, 3, w, b, eps, "identity")
    torch.testing.assert_close(rstd.double(), ref_group_norm(x, 3, w, b, eps)[2], **tol(dtype))
    assert not torch.allclose(out, groupnorm_ext.group_norm(x, 3, w, b, 1e-5), atol=1e-3)


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_groups_give_bias(dtype):
    # zero variance: every normalized value is exactly 0, so out == bias (rstd = 1/sqrt(eps))
    x = torch.full((2, 6, 3, 5), 0.75, dtype=dtype)
    x[1] = -1.25
    w, b = make_affine(6, dtype)
    out = groupnorm_ext.group_norm(x, 3, w, b)
    expected = b.double().reshape(1, 6, 1, 1).expand_as(x)
    torch.testing.assert_close(out.double(), expected, **forward_tol(dtype, x, 3, w))
    _, mean, rstd = ops.group_norm_forward(x, 3, w, b, 1e-5, "identity")
    torch.testing.assert_close(mean, torch.tensor([[0.75] * 3, [-1.25] * 3], dtype=stat_dtype(dtype)))
    torch.testing.assert_close(rstd, torch.full((2, 3), 1e-5 ** -0.5, dtype=stat_dtype(dtype)), rtol=1e-4, atol=0)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_statistics_are_stable_for_large_mean(layout):
    # mean 100, std 1: E[x^2] - E[x]^2 in float32 loses ~3 digits; Welford-style accumulation does not.
    x = make_input((2, 8, 16, 16), torch.float32, layout, scale=1.0, offset=100.0, seed=81)
    out, mean, rstd = ops.group_norm_forward(x, 2, None, None, 1e-5, "identity")
    exp_out, exp_mean, exp_rstd = ref_group_norm(x, 2)
    torch.testing.assert_close(rstd.double(), exp_rstd, atol=0, rtol=1e-4)
    torch.testing.assert_close(mean.double(), exp_mean, atol=0, rtol=1e-6)
    torch.testing.assert_close(out.double(), exp_out, atol=2e-4, rtol=1e-4)


def test_activation_identity_is_the_default():
    x = make_input((2, 6, 5, 3), seed=91)
    w, b = make_affine(6, seed=92)
    expected = groupnorm_ext.group_norm(x, 3, w, b)
    eq = dict(atol=0, rtol=0)
    torch.testing.assert_close(groupnorm_ext.group_norm(x, 3, w, b, 1e-5, None), expected, **eq)
    torch.testing.assert_close(groupnorm_ext.group_norm(x, 3, w, b, 1e-5, "identity"), expected, **eq)
    torch.testing.assert_close(groupnorm_ext.group_norm(x, 3, weight=w, bias=b, eps=1e-5, activation="identity"),
                               expected, **eq)
    torch.testing.assert_close(ops.group_norm(x, 3, w, b), expected, **eq)
    torch.testing.assert_close(ops.group_norm(x, 3, w, b, 1e-5, "identity"), expected, **eq)
    torch.testing.assert_close(ops.group_norm.default(x, 3, w, b, 1e-5, "identity"), expected, **eq)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "strided"])
def test_input_is_not_modified_and_output_is_fresh(layout):
    x = make_input((2, 6, 5, 3), layout=layout, seed=101)
    w, b = make_affine(6, seed=102)
    before = (x.clone(), w.clone(), b.clone())
    out = groupnorm_ext.group_norm(x, 3, w, b)
    for t, t0 in zip((x, w, b), before):
        torch.testing.assert_close(t, t0, atol=0, rtol=0, equal_nan=True)
    assert out.untyped_storage().data_ptr() != x.untyped_storage().data_ptr()


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_samples_are_normalized_independently(layout):
    x = make_input((5, 8, 3, 7), layout=layout, seed=111)
    w, b = make_affine(8, seed=112)
    out = groupnorm_ext.group_norm(x, 4, w, b)
    for i in range(x.shape[0]):
        torch.testing.assert_close(out[i:i + 1], groupnorm_ext.group_norm(x[i:i + 1], 4, w, b), atol=1e-6, rtol=1e-6)


def test_larger_batch_and_groups():
    # more (n, group) slabs than a handful, non-power-of-two group size (3 channels x 35 pixels)
    x = make_input((16, 48, 5, 7), torch.float32, "channels_last", seed=121)
    w, b = make_affine(48, seed=122)
    out = groupnorm_ext.group_norm(x, 16, w, b)
    torch.testing.assert_close(out.double(), ref_group_norm(x, 16, w, b)[0], **tol(torch.float32))
    assert_memory_format_preserved(out, x)


# Small contiguous slabs go through batches of consecutive slabs (cpu/group_norm_forward.cpp,
# run_fused_small_slabs): batches that end inside a sample and on its last group, a slab per channel
# (G = C) and a few channels per slab, one chunk per slab, with and without affine. A coefficient taken
# for the wrong group or channel shows against the reference.
SMALL_SLAB_CASES = [((5, 96, 9, 7), 96), ((3, 48, 5, 5), 16), ((7, 30, 41), 10), ((2, 64, 8, 8), 64)]


@pytest.mark.parametrize("affine", [True, False], ids=["affine", "plain"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("shape,G", SMALL_SLAB_CASES, ids=[f"{shape_id(s)}-G{g}" for s, g in SMALL_SLAB_CASES])
def test_small_contiguous_slabs(shape, G, dtype, affine):
    x = make_input(shape, dtype, "contiguous", seed=31)
    w, b = make_affine(shape[1], dtype, seed=32) if affine else (None, None)
    out, mean, rstd = ops.group_norm_forward(x, G, w, b, 1e-5, "identity")
    expected, exp_mean, exp_rstd = ref_group_norm(x, G, w, b, 1e-5)
    torch.testing.assert_close(out.double(), expected, **forward_tol(dtype, x, G, w))
    torch.testing.assert_close(mean.double().view(-1), exp_mean.reshape(-1), **STAT_TOLERANCES[stat_dtype(dtype)])
    torch.testing.assert_close(rstd.double().view(-1), exp_rstd.reshape(-1), **STAT_TOLERANCES[stat_dtype(dtype)])


def _random_dense_views(count, seed):
    """Dense inputs with random dim orders, sizes of 0 (batch) and 1, and arbitrary strides on size-1
    dims (which a dense tensor may carry): the cases torch's layout rules settle one by one."""
    rng = random.Random(seed)
    for _ in range(count):
        rank = rng.choice([2, 3, 4, 5])
        sizes = [rng.choice([0, 1, 2, 3]) if d == 0 else rng.choice([1, 1, 2, 3]) for d in range(rank)]
        sizes[1] = rng.choice([1, 2, 4])
        perm = list(range(rank))
        rng.shuffle(perm)
        base = torch.randn([sizes[p] for p in perm], generator=torch.Generator().manual_seed(rng.randrange(1 << 30)))
        base = base.permute([perm.index(i) for i in range(rank)])
        strides = [rng.choice([0, 1, 7, 99]) if s == 1 and rng.random() < 0.5 else st
                   for s, st in zip(sizes, base.stride())]
        yield base.as_strided(sizes, strides)


def test_layouts_of_random_dense_views_are_torchs():
    """y's and grad_input's strides are those torch's group_norm and its backward give, eagerly and
    in the fake kernels, over random dense views (300 drawn, fixed seed)."""
    for x in _random_dense_views(300, seed=66):
        G = 2 if x.shape[1] % 2 == 0 else 1
        if x.shape[0] * x.shape[1] // G == 1 and x[0, 0].numel() == 1:  # one value per group
            continue
        xo, xt = x.detach().requires_grad_(), x.detach().requires_grad_()
        ours, theirs = groupnorm_ext.group_norm(xo, G), F.group_norm(xt, G)
        assert ours.stride() == theirs.stride(), (x.shape, x.stride())
        dy = torch.randn_like(theirs)
        go, = torch.autograd.grad(ours, xo, dy)
        gt, = torch.autograd.grad(theirs, xt, dy)
        assert go.stride() == gt.stride(), (x.shape, x.stride())
        torch.testing.assert_close(go, gt, rtol=1e-3, atol=1e-3)  # groups of 2-3 values: ill-conditioned
        with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
            fake_x, fake_dy = mode.from_tensor(x), mode.from_tensor(dy)
            fake_y, fake_mean, fake_rstd = ops.group_norm_forward(fake_x, G, None, None, 1e-5, "identity")
            fake_gx = ops.group_norm_backward(fake_dy, fake_x, fake_mean, fake_rstd, None, None, G, "identity",
                                              [True, False, False])[0]
        assert fake_y.stride() == theirs.stride() and fake_gx.stride() == gt.stride(), (x.shape, x.stride())


# Channels-last shapes whose CPU forward schedule depends on N and the thread count: strips of a few groups'
# channels (N = 1 or 3 on 2 threads, samples of wide rows within L2), per-sample fused (N = 4), split (N = 1
# and N = 2 with samples past L2 and strips too narrow).
SCHEDULE_SHAPES = [(1, 512, 3, 5, 4), (3, 1280, 8, 8, 32), (1, 2560, 4, 4, 32), (4, 640, 6, 6, 32),
                   (1, 640, 48, 48, 32), (2, 640, 48, 48, 32)]


@pytest.mark.parametrize("activation", ["identity", "silu"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", SCHEDULE_SHAPES, ids=lambda c: f"{shape_id(c[:4])}-G{c[4]}")
def test_channels_last_schedules_match_fp64_reference(case, dtype, activation):
    shape, G = case[:4], case[4]
    x = make_input(shape, dtype, "channels_last", seed=51)
    w, b = make_affine(shape[1], dtype, seed=52)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        out = groupnorm_ext.group_norm(x, G, w, b, 1e-5, activation=activation)
    finally:
        torch.set_num_threads(saved)
    expected, _, _ = ref_group_norm(x, G, w, b, 1e-5)
    if activation == "silu":
        expected = F.silu(expected)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), expected, **forward_tol(dtype, x, G, w))
