"""CUDA kernels: the same contract as on CPU (fp64 reference, CPU path, layouts, dtypes, forward and
backward), shapes chosen to reach each kernel path, and run-to-run determinism. Skipped without a GPU."""
import math

import pytest
import torch

import groupnorm_ext
from reference import (FLOAT_DTYPES, LOW_PRECISION, STAT_TOLERANCES, assert_memory_format_preserved,
                       forward_tol, layouts_for_rank, make_affine, make_grad_out, make_input, ref_group_norm, ref_grads,
                       shape_id, stat_dtype, tol)

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

DEVICE = "cuda"
ops = torch.ops.groupnorm_ext

DTYPES = [pytest.param(d, id=str(d)[6:]) for d in FLOAT_DTYPES]

# (shape, G): the CPU matrix plus shapes that pick different kernel paths
SHAPES = [
    ((3, 6), 3),                 # rank 2: one element per (group, channel)
    ((2, 6, 7), 2),              # rank 3, odd length
    ((2, 6, 5, 3), 3),           # odd spatial
    ((1, 8, 3, 4, 5), 4),        # rank 5
    ((4, 12, 3, 5), 12),         # G == C
    ((2, 8, 4, 4), 1),           # G == 1
    ((2, 64, 1, 1), 32),         # tiny groups: 2 elements each
    ((2, 32, 8, 8), 32),         # N*G = 64  (< 132 SMs: fewer slabs than SMs)
    ((8, 32, 8, 8), 32),         # N*G = 256 (> 132)
    ((5, 64, 3, 3), 32),         # N*G = 160, odd spatial
    ((3, 10, 7, 9), 5),          # odd everything
    ((2, 40, 17, 13), 8),        # group larger than a warp, not a multiple of any vector width
    ((1, 16, 33, 65), 2),        # ~17k elements per group
    ((2, 8, 3, 5), 4),           # vectorised apply, S % vector != 0: channels change inside a vector
    ((2, 6, 4, 4), 3),           # channels_last with C % vector != 0
    ((2, 32, 32, 32), 4),        # one slab over a full cluster of blocks (single-read forward)
]
CASES = [pytest.param(s, g, lay, id=f"{shape_id(s)}-G{g}-{lay}") for s, g in SHAPES for lay in layouts_for_rank(len(s))]


def make(shape, dtype, layout, seed, **kw):
    return make_input(shape, dtype, layout, seed=seed, device=DEVICE, **kw)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,G,layout", CASES)
def test_forward_matches_reference_and_cpu(shape, G, layout, dtype):
    x = make(shape, dtype, layout, seed=1)
    w, b = make_affine(shape[1], dtype, seed=2, device=DEVICE)
    out, mean, rstd = ops.group_norm_forward(x, G, w, b, 1e-5, "identity")
    assert out.device.type == DEVICE and out.dtype == dtype and out.shape == x.shape
    if layout in ("contiguous", "channels_last", "channels_last_3d"):
        assert_memory_format_preserved(out, x)
    exp, exp_mean, exp_rstd = ref_group_norm(x.cpu(), G, w.cpu(), b.cpu(), 1e-5)
    out_tol = forward_tol(dtype, x.cpu(), G, w.cpu())
    torch.testing.assert_close(out.double().cpu(), exp, **out_tol)
    assert mean.shape == (shape[0], G) and mean.dtype == stat_dtype(dtype) and rstd.dtype == stat_dtype(dtype)
    torch.testing.assert_close(mean.double().cpu(), exp_mean, **STAT_TOLERANCES[stat_dtype(dtype)])
    torch.testing.assert_close(rstd.double().cpu(), exp_rstd, **STAT_TOLERANCES[stat_dtype(dtype)])
    cpu_out = groupnorm_ext.group_norm(x.cpu(), G, w.cpu(), b.cpu(), 1e-5)
    # two roundings (one per device) apart at most
    torch.testing.assert_close(out.cpu().double(), cpu_out.double(), **{k: 2 * v for k, v in out_tol.items()})
    torch.testing.assert_close(groupnorm_ext.group_norm(x, G, w, b, 1e-5), out, **out_tol)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,G,layout", CASES)
def test_backward_matches_reference(shape, G, layout, dtype):
    x = make(shape, dtype, layout, seed=3, requires_grad=True)
    w, b = make_affine(shape[1], dtype, seed=4, device=DEVICE, requires_grad=True)
    gy = make_grad_out(shape, dtype, layout, seed=5, device=DEVICE)
    groupnorm_ext.group_norm(x, G, w, b, 1e-5).backward(gy)
    exp = ref_grads(x.cpu(), G, w.cpu(), b.cpu(), gy.cpu())
    for name, got, e in zip(("grad_input", "grad_weight", "grad_bias"), (x.grad, w.grad, b.grad), exp):
        assert got.device.type == DEVICE and got.dtype == dtype
        torch.testing.assert_close(got.double().cpu(), e, msg=lambda m: f"{name}: {m}", **tol(dtype, grad=True))


@pytest.mark.parametrize("affine", ["none", "weight_only", "bias_only"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES)
def test_partial_affine_forward_backward(affine, layout, dtype):
    shape, G = (3, 32, 5, 7), 8
    x = make(shape, dtype, layout, seed=6, requires_grad=True)
    w, b = make_affine(32, dtype, seed=7, device=DEVICE, requires_grad=True)
    w = w if affine == "weight_only" else None
    b = b if affine == "bias_only" else None
    gy = make_grad_out(shape, dtype, layout, seed=8, device=DEVICE)
    out = groupnorm_ext.group_norm(x, G, w, b)
    torch.testing.assert_close(out.double().cpu(), ref_group_norm(x.cpu(), G, None if w is None else w.cpu(),
                                                                  None if b is None else b.cpu())[0], **tol(dtype))
    out.backward(gy)
    exp = ref_grads(x.cpu(), G, None if w is None else w.cpu(), None if b is None else b.cpu(), gy.cpu())
    torch.testing.assert_close(x.grad.double().cpu(), exp[0], **tol(dtype, grad=True))
    for t, e in ((w, exp[1]), (b, exp[2])):
        if t is not None:
            torch.testing.assert_close(t.grad.double().cpu(), e, **tol(dtype, grad=True))


@pytest.mark.parametrize("dtype", [pytest.param(d, id=str(d)[6:]) for d in LOW_PRECISION])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "misaligned"])
def test_low_precision_with_float32_affine(layout, dtype):
    shape, G = (4, 64, 9, 11), 16
    x = make(shape, dtype, layout, seed=9, requires_grad=True)
    w, b = make_affine(64, torch.float32, seed=10, device=DEVICE, requires_grad=True)
    gy = make_grad_out(shape, dtype, layout, seed=11, device=DEVICE)
    out = groupnorm_ext.group_norm(x, G, w, b)
    assert out.dtype == dtype
    torch.testing.assert_close(out.double().cpu(), ref_group_norm(x.cpu(), G, w.cpu(), b.cpu())[0], **tol(dtype))
    out.backward(gy)
    assert x.grad.dtype == dtype and w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
    exp = ref_grads(x.cpu(), G, w.cpu(), b.cpu(), gy.cpu())
    for got, e in zip((x.grad, w.grad, b.grad), exp):
        torch.testing.assert_close(got.double().cpu(), e, **tol(dtype, grad=True))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_group_larger_than_a_block(layout):
    # 8 channels x 64^3 = 2M elements per group: several blocks (or a split reduction) per slab
    shape, G = (1, 32, 64, 64, 64), 4
    x = make(shape, torch.float32, layout, seed=12, requires_grad=True)
    w, b = make_affine(32, seed=13, device=DEVICE, requires_grad=True)
    out, mean, rstd = ops.group_norm_forward(x.detach(), G, w.detach(), b.detach(), 1e-5, "identity")
    exp, exp_mean, exp_rstd = ref_group_norm(x.detach(), G, w.detach(), b.detach())
    torch.testing.assert_close(mean.double(), exp_mean, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rstd.double(), exp_rstd, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out.double(), exp, atol=1e-4, rtol=1e-4)
    assert_memory_format_preserved(out, x)
    gy = make_grad_out(shape, torch.float32, layout, seed=14, device=DEVICE)
    groupnorm_ext.group_norm(x, G, w, b).backward(gy)
    exp_g = ref_grads(x.detach(), G, w.detach(), b.detach(), gy)
    for got, e in zip((x.grad, w.grad, b.grad), exp_g):
        torch.testing.assert_close(got.double(), e, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["float32", "float16"])
# (the small ones take the single-read forward with one element per load; the last, over 2^20
# elements, the chunked path's unaligned loads)
@pytest.mark.parametrize("shape,G", [((2, 6, 5, 3), 3), ((3, 64, 7, 9), 32), ((2, 16, 4, 4, 5), 4), ((4, 8, 33), 2),
                                     ((2, 64, 96, 96), 32)],
                         ids=lambda v: shape_id(v) if isinstance(v, tuple) else f"G{v}")
def test_misaligned_views(shape, G, dtype):
    # x[..., 1:]: storage offset 1 and odd row pitch, so no vectorised load is aligned
    wide = make(shape[:-1] + (shape[-1] + 1,), dtype, "contiguous", seed=15)
    x = wide[..., 1:]
    assert x.storage_offset() == 1 and not x.is_contiguous()
    w, b = make_affine(shape[1], dtype, seed=16, device=DEVICE)
    out = groupnorm_ext.group_norm(x, G, w, b)
    torch.testing.assert_close(out.double().cpu(), ref_group_norm(x.cpu(), G, w.cpu(), b.cpu())[0], **tol(dtype))
    # a misaligned contiguous tensor: offset 1 into a flat buffer
    flat = torch.empty(x.numel() + 1, dtype=dtype, device=DEVICE)
    xc = flat[1:].view(shape)
    xc.copy_(x)
    assert xc.is_contiguous() and xc.storage_offset() == 1
    torch.testing.assert_close(groupnorm_ext.group_norm(xc, G, w, b), out, **tol(dtype))
    xr = xc.detach().requires_grad_(True)
    gy = make_grad_out(shape, dtype, seed=17, device=DEVICE)
    groupnorm_ext.group_norm(xr, G, w, b).backward(gy)
    torch.testing.assert_close(xr.grad.double().cpu(), ref_grads(x.cpu(), G, w.cpu(), b.cpu(), gy.cpu())[0],
                               **tol(dtype, grad=True))


@pytest.mark.parametrize("shape,G,layout", [((8, 32, 16, 16), 32, "contiguous"), ((8, 32, 16, 16), 8, "channels_last"),
                                            ((1, 32, 32, 32, 32), 4, "contiguous"), ((2, 64, 9, 11), 16, "misaligned")],
                         ids=lambda v: shape_id(v) if isinstance(v, tuple) else str(v))
def test_deterministic(shape, G, layout):
    x = make(shape, torch.float32, layout, seed=18)
    w, b = make_affine(shape[1], seed=19, device=DEVICE)
    gy = make_grad_out(shape, torch.float32, layout, seed=20, device=DEVICE)

    def run():
        xx, ww, bb = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
        if layout == "misaligned":
            wide = torch.empty(shape[:-1] + (shape[-1] + 1,), device=DEVICE)
            xx = wide[..., 1:].copy_(x).requires_grad_(True)
        out = groupnorm_ext.group_norm(xx, G, ww, bb)
        out.backward(gy)
        return out.detach(), xx.grad, ww.grad, bb.grad

    first, second = run(), run()
    for a, c in zip(first, second):
        assert torch.equal(a, c), "two identical runs gave different bits"


@pytest.mark.parametrize("dtype", DTYPES)
def test_empty_batch(dtype):
    for shape, layout in (((0, 6, 5, 3), "contiguous"), ((0, 6, 5, 3), "channels_last"), ((0, 6), "contiguous")):
        x = make(shape, dtype, layout, seed=21, requires_grad=True)
        w, b = make_affine(6, dtype, device=DEVICE, requires_grad=True)
        out = groupnorm_ext.group_norm(x, 3, w, b)
        assert out.shape == shape and out.device.type == DEVICE
        out.backward(torch.ones_like(out))
        torch.testing.assert_close(w.grad, torch.zeros_like(w))


# (shape, G, layout, dtype, activation): the single-read forward (a cluster), the chunked one (statistics,
# combine, apply), channels-last, a fused activation (its backward pre-pass)
GRAPH_CASES = [
    ((2, 64, 16, 16), 8, "contiguous", torch.float16, "identity"),
    ((1, 8, 300, 700), 1, "contiguous", torch.float32, "identity"),
    ((2, 1280, 16, 16), 32, "channels_last", torch.bfloat16, "identity"),
    ((2, 320, 16, 16), 32, "channels_last", torch.float32, "silu"),
]


@pytest.mark.parametrize("shape,G,layout,dtype,act", GRAPH_CASES,
                         ids=[f"{shape_id(c[0])}-G{c[1]}-{c[2]}-{str(c[3])[6:]}-{c[4]}" for c in GRAPH_CASES])
def test_cuda_graph_capture_and_replay(shape, G, layout, dtype, act):
    # CUDA graphs (by hand, or torch.compile's "reduce-overhead") capture forward and backward: no host
    # synchronization or allocation outside the caching allocator, every launch on the capturing stream.
    # Replays on new data give the eager results bit for bit.
    x = make(shape, dtype, layout, seed=40, requires_grad=True)
    w, b = make_affine(shape[1], dtype, seed=41, device=DEVICE, requires_grad=True)
    gy = make_grad_out(shape, dtype, layout, seed=42, device=DEVICE)

    def step():
        out = groupnorm_ext.group_norm(x, G, w, b, 1e-5, activation=act)
        return (out,) + torch.autograd.grad(out, (x, w, b), gy)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):  # warm-up outside the capture, as torch.cuda.graphs asks
        for _ in range(2):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for seed in (43, 44):
        with torch.no_grad():
            x.copy_(make(shape, dtype, layout, seed=seed))
            gy.copy_(make_grad_out(shape, dtype, layout, seed=seed + 10, device=DEVICE))
        graph.replay()
        eager = step()
        for name, got, want in zip(("out", "grad_input", "grad_weight", "grad_bias"), captured, eager):
            assert torch.equal(got, want), f"{name}: graph replay differs from eager"


def test_runs_on_current_device_stream():
    # results are visible on the current stream without an explicit synchronize
    s = torch.cuda.Stream()
    x = make((4, 32, 16, 16), torch.float32, "contiguous", seed=22)
    w, b = make_affine(32, seed=23, device=DEVICE)
    expected = groupnorm_ext.group_norm(x, 8, w, b)
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        out = groupnorm_ext.group_norm(x, 8, w, b)
        total = out.sum()
    torch.cuda.current_stream().wait_stream(s)
    torch.testing.assert_close(out, expected, atol=0, rtol=0)
    torch.testing.assert_close(total, expected.sum(), atol=1e-3, rtol=1e-5)


# (shape, G, layout, dtype, affine dtype): one case per kernel path of the CUDA executors.
PATH_CASES = [
    ((2, 320, 64, 64), 32, "contiguous", torch.float32, None),         # fused, cluster of 8 (SD-UNet block)
    ((2, 320, 64, 64), 32, "channels_last", torch.float16, None),      # NSC stats, vectorised, lanes > 1
    ((1, 64, 96, 96), 2, "contiguous", torch.bfloat16, torch.float32),  # slab over the on-chip limit: chunked
    ((1, 64, 96, 96), 2, "contiguous", torch.float16, None),
    ((1, 32, 64, 64), 2, "contiguous", torch.float16, None),           # exactly 8 blocks of registers (64K)
    ((1, 8, 300, 700), 1, "contiguous", torch.float32, None),          # G=1, many chunks: parallel tree
    ((1, 32, 160, 160), 1, "channels_last", torch.float32, None),      # NSC, G=1, 100 chunks
    ((2, 4096, 3, 5), 32, "channels_last", torch.float32, None),       # C too large for shared slots
    ((1, 8192, 2, 2), 64, "channels_last", torch.bfloat16, None),      # C >= the elementwise tile
    ((4, 1280, 16, 16), 64, "channels_last", torch.bfloat16, torch.float32),  # cols > threads (D % 8, > 2^20: chunked)
    ((4, 1280, 8, 8), 32, "channels_last", torch.float32, None),       # fused NSC, rows of 10 vectors, cluster 2
    ((1, 64, 64, 64), 4, "channels_last", torch.float32, None),        # fused NSC, 64K slab over a cluster of 8
    ((2, 64, 32, 32), 4, "channels_last", torch.bfloat16, torch.float32),  # fused NSC, float32 affine
    ((2, 16, 4, 16, 16), 4, "channels_last_3d", torch.float32, None),  # fused NSC, rank 5, one vector per row
    ((3, 64, 9, 11), 16, "contiguous", torch.float64, None),           # double everywhere
    ((2, 64, 8, 8), 16, "contiguous", torch.bfloat16, torch.float32),  # fused, float32 affine
    ((2, 16, 5000), 4, "contiguous", torch.float16, None),             # rank 3, slab 20000 (cluster)
    ((1, 4, 3, 100, 100), 2, "channels_last_3d", torch.float32, None),
    ((5, 7), 7, "contiguous", torch.float32, None),                    # rank 2, one element per group
    # fused with one element per load (small inputs whose slabs do not split into vectors)
    ((8, 64, 8, 8), 64, "channels_last", torch.float32, None),         # G == C: one channel per row
    ((4, 640, 16, 16), 32, "channels_last", torch.float16, None),      # rows of 20 channels, cluster of 8
    ((3, 10, 7, 9), 5, "contiguous", torch.bfloat16, torch.float32),   # odd slab (126 elements)
    ((1, 6, 50, 70), 1, "channels_last", torch.float32, None),         # 21000 > 16384 scalars: chunked
    # backward coefficients of groups under 8 channels with more than 32 chunk partials a
    # channel: the later warps sharing a channel do work (K = 44)
    ((1, 4, 600, 600), 1, "contiguous", torch.float32, None),          # D = 4: two warps a channel
    ((2, 2, 600, 600), 2, "contiguous", torch.float32, None),          # D = 1: eight warps a channel
]


@pytest.mark.parametrize("shape,G,layout,dtype,affine_dtype", PATH_CASES,
                         ids=[f"{shape_id(c[0])}-G{c[1]}-{c[2]}-{str(c[3])[6:]}-{c[4] and 'f32affine'}"
                              for c in PATH_CASES])
def test_kernel_paths(shape, G, layout, dtype, affine_dtype):
    x = make(shape, dtype, layout, seed=30, requires_grad=True)
    w, b = make_affine(shape[1], affine_dtype or dtype, seed=31, device=DEVICE, requires_grad=True)
    gy = make_grad_out(shape, dtype, layout, seed=32, device=DEVICE)
    out, mean, rstd = ops.group_norm_forward(x.detach(), G, w.detach(), b.detach(), 1e-5, "identity")
    if layout != "misaligned":
        assert_memory_format_preserved(out, x)
    exp, exp_mean, exp_rstd = ref_group_norm(x.detach().cpu(), G, w.detach().cpu(), b.detach().cpu())
    torch.testing.assert_close(mean.double().cpu(), exp_mean, **STAT_TOLERANCES[stat_dtype(dtype)])
    torch.testing.assert_close(rstd.double().cpu(), exp_rstd, **STAT_TOLERANCES[stat_dtype(dtype)])
    torch.testing.assert_close(out.double().cpu(), exp, **forward_tol(dtype, x.detach().cpu(), G, w.detach().cpu()))
    groupnorm_ext.group_norm(x, G, w, b).backward(gy)
    exp_g = ref_grads(x.detach().cpu(), G, w.detach().cpu(), b.detach().cpu(), gy.cpu())
    for name, got, e in zip(("grad_input", "grad_weight", "grad_bias"), (x.grad, w.grad, b.grad), exp_g):
        scale = max(e.abs().max().item(), 1.0)  # sums over many elements: relative to their size
        tl = tol(dtype, grad=True)
        torch.testing.assert_close(got.double().cpu() / scale, e / scale, msg=lambda m: f"{name}: {m}", **tl)


@pytest.mark.parametrize("shape,G,layout", [((2, 32, 32, 32), 4, "contiguous"), ((1, 8, 300, 700), 1, "contiguous"),
                                            ((1, 32, 160, 160), 1, "channels_last"),
                                            ((1, 64, 64, 64), 4, "channels_last")],
                         ids=["cluster", "chunked", "nsc-chunked", "nsc-cluster"])
def test_paths_deterministic(shape, G, layout):
    x = make(shape, torch.float32, layout, seed=33, requires_grad=True)
    w, b = make_affine(shape[1], seed=34, device=DEVICE, requires_grad=True)
    gy = make_grad_out(shape, torch.float32, layout, seed=35, device=DEVICE)
    runs = []
    for _ in range(2):
        xx, ww, bb = (t.detach().clone().requires_grad_(True) for t in (x, w, b))
        out = groupnorm_ext.group_norm(xx, G, ww, bb)
        out.backward(gy)
        runs.append((out.detach(), xx.grad, ww.grad, bb.grad))
    for a, c in zip(*runs):
        assert torch.equal(a, c), "two identical runs gave different bits"


def test_large_offset_float32_statistics():
    # |mean| >> std and |x| ~ 1e30: moments in double, two-pass (no cancellation, no overflow)
    x = (torch.randn(2, 32, 40, 40, device=DEVICE, dtype=torch.float64) * 1e3 + 1e7).float()
    out, mean, rstd = ops.group_norm_forward(x, 8, None, None, 1e-5, "identity")
    exp, exp_mean, exp_rstd = ref_group_norm(x.cpu(), 8)
    torch.testing.assert_close(rstd.double().cpu(), exp_rstd, rtol=1e-4, atol=0)
    torch.testing.assert_close(mean.double().cpu(), exp_mean, rtol=1e-6, atol=0)
    big = torch.randn(1, 8, 64, 64, device=DEVICE) * 1e30
    for layout in (torch.contiguous_format, torch.channels_last):
        out, mean, rstd = ops.group_norm_forward(big.contiguous(memory_format=layout), 2, None, None, 1e-5, "identity")
        assert torch.isfinite(rstd).all() and torch.isfinite(out).all()
        torch.testing.assert_close(rstd.double().cpu(), ref_group_norm(big.cpu(), 2)[2], rtol=1e-4, atol=0)


@pytest.mark.parametrize("shape,G,layout", [((2, 32, 40, 40), 8, "contiguous"), ((1, 16, 256, 256), 2, "contiguous"),
                                            ((2, 32, 40, 40), 8, "channels_last"), ((1, 64, 256, 256), 4, "channels_last")],
                         ids=["fused", "chunked", "nsc", "nsc-chunked"])
def test_shift_outlier_statistics(shape, G, layout):
    # The one-pass kernels shift each chunk's sums by one of its values: its first element in
    # memory (NCS; the whole slab's first for the fused path) or each group's first element in
    # the chunk's first row (NSC). Make exactly those values outliers (1e6 among N(0, 1) data,
    # so sum (x - shift)^2 is hundreds of times M2): mean and rstd still match fp64 two-pass.
    x = make(shape, torch.float32, layout, seed=36)
    N, C, S, D = shape[0], shape[1], math.prod(shape[2:]), shape[1] // G
    flat = torch.as_strided(x, (x.numel(),), (1,), x.storage_offset())  # memory order
    if layout == "contiguous":
        chunk, num = groupnorm_ext._C._plan_parallel_chunk_plan(D * S, 1, N * G, 1, 8)
        starts = [ng * D * S + k * chunk for ng in range(N * G) for k in range(num)]
    else:
        chunk, num = groupnorm_ext._C._plan_parallel_chunk_plan(S, C, N, 1, 1)
        starts = [(n * S + k * chunk) * C + g * D for n in range(N) for k in range(num) for g in range(G)]
    flat[torch.tensor(starts, device=DEVICE)] = 1e6
    out, mean, rstd = ops.group_norm_forward(x, G, None, None, 1e-5, "identity")
    exp, exp_mean, exp_rstd = ref_group_norm(x.cpu(), G)
    torch.testing.assert_close(mean.double().cpu(), exp_mean, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(rstd.double().cpu(), exp_rstd, rtol=1e-5, atol=0)
    torch.testing.assert_close(out.double().cpu(), exp, rtol=1e-4, atol=1e-4)


OPCHECK_CASES = [((2, 6, 5, 3), 3, "contiguous"), ((2, 8, 5, 3), 2, "channels_last"), ((2, 8, 7), 4, "contiguous"),
                 ((1, 4, 2, 3, 2), 2, "channels_last_3d")]


@pytest.mark.parametrize("shape,G,layout", OPCHECK_CASES, ids=lambda v: shape_id(v) if isinstance(v, tuple) else str(v))
def test_opcheck_cuda(shape, G, layout):
    # schema, fake kernels (strides of the CUDA outputs included), autograd registration
    x = make(shape, torch.float32, layout, seed=40, requires_grad=True)
    w, b = make_affine(shape[1], seed=41, device=DEVICE, requires_grad=True)
    torch.library.opcheck(ops.group_norm.default, (x, G, w, b, 1e-5, "identity"))
    xd = x.detach()
    torch.library.opcheck(ops.group_norm_forward.default, (xd, G, w.detach(), b.detach(), 1e-5, "identity"))
    _, mean, rstd = ops.group_norm_forward(xd, G, w.detach(), b.detach(), 1e-5, "identity")
    gy = make_grad_out(shape, torch.float32, layout, seed=42, device=DEVICE)
    for mask in ([True, True, True], [True, False, False], [False, True, True]):
        torch.library.opcheck(ops.group_norm_backward.default,
                              (gy, xd, mean, rstd, w.detach(), b.detach(), G, "identity", mask))


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_gradcheck_and_gradgradcheck_cuda(layout):
    x = make((2, 6, 3, 4), torch.float64, layout, seed=43, requires_grad=True)
    w, b = make_affine(6, torch.float64, seed=44, device=DEVICE, requires_grad=True)

    def fn(x, w, b):
        return groupnorm_ext.group_norm(x, 3, w, b, 1e-5)

    assert torch.autograd.gradcheck(fn, (x, w, b))
    assert torch.autograd.gradgradcheck(fn, (x, w, b))


@pytest.mark.parametrize("amp_dtype", [torch.float16, torch.bfloat16], ids=["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_autocast_runs_in_float32_like_torch(amp_dtype, layout):
    """torch.autocast("cuda"): torch's group_norm is on the float32 list, so its output (and the
    module's) is float32 whatever the conv before it produced; ours matches dtype and values, and
    the gradients flowing back to the low-precision activation have torch's dtype too."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(4, 8, 3, padding=1).to(DEVICE)
    if layout == "channels_last":
        conv = conv.to(memory_format=torch.channels_last)
    x = make_input((2, 4, 9, 9), torch.float32, layout, seed=91, device=DEVICE)
    ours_m, torch_m = groupnorm_ext.GroupNorm(2, 8).to(DEVICE), torch.nn.GroupNorm(2, 8).to(DEVICE)
    with torch.no_grad():
        ours_m.weight.uniform_(0.5, 1.5)
        ours_m.bias.uniform_(-0.5, 0.5)
    torch_m.load_state_dict(ours_m.state_dict())
    outs = {}
    for name, norm in (("ours", ours_m), ("torch", torch_m)):
        with torch.autocast("cuda", dtype=amp_dtype):
            h = conv(x).detach().requires_grad_()
            assert h.dtype == amp_dtype
            y = norm(h)
            f = groupnorm_ext.group_norm(h, 2) if name == "ours" else torch.nn.functional.group_norm(h, 2)
        (dh,) = torch.autograd.grad((y.float() * 1.5).sum() + f.float().sum(), h)
        outs[name] = (y, f, dh)
    for i, (o, t) in enumerate(zip(outs["ours"], outs["torch"])):
        assert o.dtype == t.dtype, (o.dtype, t.dtype)
        torch.testing.assert_close(o, t, **tol(o.dtype, grad=i == 2))
