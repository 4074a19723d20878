"""More than 2^31 elements: a bfloat16 CPU input of shape (1, 2, 2^30 + 1) (2^31 + 2 elements, 4.3 GB; the
output is another 4.3 GB) gives the right statistics and output.

* G = 2, contiguous: the second group starts at element 2^30 + 1 and crosses element 2^31.
* G = 1, channels_last: the same storage viewed as (1, 2S / 130, 1, 130) permuted to (N, C, H, W) =
  (1, 130, 2S / 130, 1), channels_last strides (the NSC path, read in place; C = 130 so that the channel
  loop has a vector tail): one group of 2^31 + 2 elements, whose element offsets (s * C + c) pass 2^31.

Outputs are checked at the start, across the group boundary, across element 2^31, at the end and in 16
windows spread over the tensor. The expected statistics come from a chunked float64 computation
(per-piece float64 sums, done while each tile is generated, combined with Chan's formula); no float64 copy
of the whole tensor is ever made. The input has a different offset in every 2^22-element tile (a ramp),
so an index that wraps at 2^31 or 2^32 reads other values and shows.
Each test runs on the CPU and, with a GPU of enough free memory, on CUDA (the same input copied to the
device: the CUDA kernels' 64-bit offsets). Marked `large` (deselect with -m "not large"); skipped when the
machine lacks the memory.
"""
import gc
import math

import pytest
import torch

import groupnorm_ext  # noqa: F401
from reference import TOLERANCES

pytestmark = pytest.mark.large
ops = torch.ops.groupnorm_ext

S = 2 ** 30 + 1
NUMEL = 2 * S                       # 2^31 + 2
TILE = 2 ** 22
PIECE = 2 ** 20                     # float64 statistics piece by piece (8 MB, cache-resident)
NEEDED_BYTES = 2 * NUMEL * 2 + (3 << 30)
NSC_C = 130                         # 2 * 5 * 13 divides 2 * (2^30 + 1) = 2 * 5^2 * 13 * 41 * 61 * 1321
# (begin, end, name) of the flat ranges whose outputs are checked element by element
WINDOWS = ([(0, 4096, "start"), (S - 2048, S + 2048, "group boundary"), (2 ** 31 - 4096, 2 ** 31 + 2, "across 2^31"),
            (NUMEL - 4096, NUMEL, "end")]
           + [(i * (NUMEL // 16) + 12345, i * (NUMEL // 16) + 12345 + 1024, f"window {i}") for i in range(16)])


def mem_available_bytes():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def piece_moments(buf, piece):
    """(count, mean, M2) of a 1-D piece in float64, from its float64 sum and sum of squares (the data has
    |mean| <= 2 and std ~ 1, so sum(x^2) - sum(x)^2 / n loses less than one of float64's 16 digits)."""
    c = buf[:piece.numel()]
    c.copy_(piece)
    n = c.numel()
    s1 = c.sum().item()
    s2 = torch.dot(c, c).item()
    return n, s1 / n, max(s2 - s1 * s1 / n, 0.0)


def combine(a, b):
    """Chan's combine of two (count, mean, M2)."""
    (na, ma, m2a), (nb, mb, m2b) = a, b
    n = na + nb
    if na == 0:
        return b
    d = mb - ma
    return n, ma + d * nb / n, m2a + m2b + d * d * na * nb / n


@pytest.fixture(scope="module")
def big_input():
    """(x, moments, tile_sums): x the flat bfloat16 input of NUMEL elements; moments the float64 (count,
    mean, M2) of each half (the two groups of the contiguous (1, 2, S) view), computed tile by tile while
    each tile is written (still in cache), never from a float64 copy of the whole tensor; tile_sums[k][g]
    the float64 sum of x over tile k's part of group g (for the backward's reference)."""
    avail = mem_available_bytes()
    if avail is not None and avail < NEEDED_BYTES:
        pytest.skip(f"needs ~{NEEDED_BYTES / 2**30:.1f} GiB of free memory, {avail / 2**30:.1f} GiB available")
    gen = torch.Generator().manual_seed(1234)
    noise = torch.randn(TILE, generator=gen, dtype=torch.float32).to(torch.bfloat16)
    buf = torch.empty(PIECE, dtype=torch.float64)
    x = torch.empty(NUMEL, dtype=torch.bfloat16)
    moments = [(0, 0.0, 0.0), (0, 0.0, 0.0)]
    tiles = math.ceil(NUMEL / TILE)
    tile_sums = [[0.0, 0.0] for _ in range(tiles)]
    for k in range(tiles):
        begin, end = k * TILE, min((k + 1) * TILE, NUMEL)
        torch.add(noise[:end - begin], -2.0 + 4.0 * k / tiles, out=x[begin:end])   # a different offset per tile
        for g, (lo, hi) in enumerate(((0, S), (S, NUMEL))):
            for a in range(max(begin, lo), min(end, hi), PIECE):
                b = min(a + PIECE, end, hi)
                piece = piece_moments(buf, x[a:b])
                moments[g] = combine(moments[g], piece)
                tile_sums[k][g] += piece[0] * piece[1]
    del noise, buf
    assert moments[0][0] == S and moments[1][0] == S
    yield x, moments, tile_sums
    del x
    gc.collect()


DEVICES = [pytest.param("cpu", id="cpu"), pytest.param("cuda", id="cuda")]


def on_device(x, device):
    """x on `device` (skipping when CUDA is missing or lacks the memory for input and output)."""
    if device == "cpu":
        return x
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    free, _ = torch.cuda.mem_get_info()
    if free < 2 * x.numel() * x.element_size() + (1 << 30):
        pytest.skip(f"needs ~{(2 * x.numel() * x.element_size() + (1 << 30)) / 2**30:.1f} GiB of GPU memory")
    return x.to(device)


def rstd_of(moments, eps):
    n, _, m2 = moments
    return 1.0 / math.sqrt(m2 / n + eps)


def check_stats(mean, rstd, expected, what):
    """mean / rstd (float32, accumulated over > 2^30 elements) against the float64 reference."""
    for g, (em, er) in enumerate(expected):
        m, r = mean.flatten()[g].item(), rstd.flatten()[g].item()
        assert math.isfinite(m) and math.isfinite(r), f"{what} group {g}: mean {m}, rstd {r}"
        assert abs(m - em) <= 1e-5 + 1e-5 * abs(em), f"{what} group {g}: mean {m!r}, expected {em!r}"
        assert abs(r - er) <= 1e-5 * er, f"{what} group {g}: rstd {r!r}, expected {er!r}"


def check_slice(out_flat, x_flat, begin, end, channel_of, mean, rstd, w, b, what):
    """out_flat[begin:end] against (x - mean) * rstd * w + b computed in float64 from the float64 reference
    statistics; channel_of(idx) gives the channel (= group here) of each flat index."""
    idx = torch.arange(begin, end)
    c = channel_of(idx)
    xs = x_flat[begin:end].double()
    expected = (xs - mean[c]) * rstd[c] * w[c] + b[c]
    got = out_flat[begin:end].double().cpu()
    torch.testing.assert_close(got, expected, **TOLERANCES[torch.bfloat16],
                               msg=lambda m: f"{what}: output[{begin}:{end}]: {m}")


@pytest.mark.parametrize("device", DEVICES)
def test_more_than_2_31_elements_contiguous_two_groups(big_input, device):
    big_input, reference_moments, _ = big_input
    x = on_device(big_input, device).view(1, 2, S)
    eps = 1e-5
    w = torch.tensor([1.5, -0.5])
    b = torch.tensor([0.25, -1.0])
    out, mean, rstd = ops.group_norm_forward(x, 2, w.to(device), b.to(device), eps, "identity")
    try:
        assert out.shape == x.shape and out.dtype == torch.bfloat16 and out.is_contiguous()
        exp = [(m[1], rstd_of(m, eps)) for m in reference_moments]
        check_stats(mean, rstd, exp, "G=2")
        ref_mean = torch.tensor([e[0] for e in exp], dtype=torch.float64)
        ref_rstd = torch.tensor([e[1] for e in exp], dtype=torch.float64)
        o, xf = out.view(-1), big_input

        def channel_of(idx):
            return idx // S

        w64, b64 = w.double(), b.double()
        for begin, end, where in WINDOWS:
            check_slice(o, xf, begin, end, channel_of, ref_mean, ref_rstd, w64, b64, f"G=2 {where}")
    finally:
        del out, x
        gc.collect()


@pytest.mark.parametrize("device", DEVICES)
def test_more_than_2_31_elements_channels_last_one_group(big_input, device):
    big_input, reference_moments, _ = big_input
    # (1, C, S2, 1) logical, stored as (1, S2, 1, C): element (0, c, s, 0) at flat offset C * s + c
    x = on_device(big_input, device).view(1, NUMEL // NSC_C, 1, NSC_C).permute(0, 3, 1, 2)
    assert not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
    assert x.shape == (1, NSC_C, NUMEL // NSC_C, 1)
    eps = 1e-5
    out, mean, rstd = ops.group_norm_forward(x, 1, None, None, eps, "identity")
    try:
        assert out.shape == x.shape and out.stride() == x.stride(), "output must keep the channels_last layout"
        whole = combine(*reference_moments)
        check_stats(mean, rstd, [(whole[1], rstd_of(whole, eps))], "G=1 NSC")
        o = out.permute(0, 2, 3, 1).reshape(-1)   # a view: the same flat order as the input's storage
        assert o.data_ptr() == out.data_ptr()
        m64 = torch.tensor([whole[1]], dtype=torch.float64)
        r64 = torch.tensor([rstd_of(whole, eps)], dtype=torch.float64)
        one, zero = torch.ones(1, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)

        def channel_of(idx):
            return torch.zeros_like(idx)

        for begin, end, where in WINDOWS:
            check_slice(o, big_input, begin, end, channel_of, m64, r64, one, zero, f"G=1 NSC {where}")
    finally:
        del out, x
        gc.collect()


def tile_grad_out(k):
    """The backward test's grad_out on tile k: one constant per tile, so that its sums against x come
    from the fixture's per-tile sums; 0.5 .. 2 in steps of 1/8 (exact in bfloat16), rising with k as
    the input's offset does, so that grad_out and x correlate (the grad_input term in xhat counts)."""
    return 0.5 + (12 * k // 512) / 8


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_more_than_2_31_elements_backward(big_input, layout, device):
    """grad_input (and, contiguous, grad_weight and grad_bias) over 2^31 + 2 elements against float64
    references built from the fixture's sums: with grad_out constant on each tile, a group's sums are
    sum(dy) = sum_k d_k * count(k, group) and sum(dy * x) = sum_k d_k * sum(x on tile k, group).
    contiguous: the (1, 2, 2^30 + 1) view, G = 2, affine; channels_last: the (1, 130, S2, 1) view of the
    forward test, G = 1, no affine (one group of every element, offsets s * C + c past 2^31)."""
    x_flat, reference_moments, tile_sums = big_input
    avail = mem_available_bytes()
    if device == "cpu" and avail is not None and avail < 2 * NUMEL * 2 + (2 << 30):
        pytest.skip(f"needs ~{(2 * NUMEL * 2 + (2 << 30)) / 2**30:.1f} GiB more free memory")
    tiles = len(tile_sums)
    dy_flat = torch.empty(NUMEL, dtype=torch.bfloat16)
    for k in range(tiles):
        dy_flat[k * TILE:min((k + 1) * TILE, NUMEL)].fill_(tile_grad_out(k))
    eps = 1e-5
    contiguous = layout == "contiguous"
    # group of each flat index, the groups' flat ranges, and the moments of each group
    groups = [(0, S), (S, NUMEL)] if contiguous else [(0, NUMEL)]
    moments = reference_moments if contiguous else [combine(*reference_moments)]
    G = len(groups)
    w = torch.tensor([1.5, -0.5]) if contiguous else None
    b = torch.tensor([0.25, -1.0]) if contiguous else None
    stats = [(m[1], rstd_of(m, eps)) for m in moments]
    mean = torch.tensor([[s[0] for s in stats]], dtype=torch.float32)
    rstd = torch.tensor([[s[1] for s in stats]], dtype=torch.float32)

    def view(t):
        return t.view(1, 2, S) if contiguous else t.view(1, NUMEL // NSC_C, 1, NSC_C).permute(0, 3, 1, 2)

    x = view(on_device(x_flat, device))
    dy = view(dy_flat.to(device))
    del dy_flat
    try:
        m64, r64 = mean.double().flatten(), rstd.double().flatten()
        sum_dy, sum_dy_x = [0.0] * G, [0.0] * G
        for k in range(tiles):
            begin, end = k * TILE, min((k + 1) * TILE, NUMEL)
            for g, (lo, hi) in enumerate(groups):
                count = max(0, min(end, hi) - max(begin, lo))
                sum_dy[g] += tile_grad_out(k) * count
                sum_dy_x[g] += tile_grad_out(k) * (tile_sums[k][g] if contiguous else sum(tile_sums[k]))
        # sum(dy * xhat) = rstd * (sum(dy * x) - mean * sum(dy)): grad_weight, and grad_input's term
        sum_dy_xhat = [r64[g].item() * (sum_dy_x[g] - m64[g].item() * sum_dy[g]) for g in range(G)]
        dev = lambda t: None if t is None else t.to(device)  # noqa: E731
        gi, gw, gb = ops.group_norm_backward(dy, x, dev(mean), dev(rstd), dev(w), dev(b), G, "identity",
                                             [True, contiguous, contiguous])
        assert gi.shape == x.shape and gi.dtype == torch.bfloat16 and gi.stride() == x.stride()
        if contiguous:
            for g in range(G):
                assert math.isclose(gb[g].item(), sum_dy[g], rel_tol=1e-5), (g, gb[g].item(), sum_dy[g])
                assert math.isclose(gw[g].item(), sum_dy_xhat[g], rel_tol=1e-4, abs_tol=1e-6 * abs(sum_dy[g])), (
                    g, gw[g].item(), sum_dy_xhat[g])
        # the flat storage order of grad_input is the input's (a view for channels_last)
        gi_flat = gi.view(-1) if contiguous else gi.permute(0, 2, 3, 1).reshape(-1)
        assert gi_flat.data_ptr() == gi.data_ptr()
        w64 = w.double() if contiguous else torch.ones(1, dtype=torch.float64)
        sum_dy64 = torch.tensor(sum_dy, dtype=torch.float64)
        sum_dy_xhat64 = torch.tensor(sum_dy_xhat, dtype=torch.float64)
        n = float(NUMEL // G)
        for begin, end, where in WINDOWS:
            idx = torch.arange(begin, end)
            g = idx // S if contiguous else torch.zeros_like(idx)
            xs = x_flat[begin:end].double()
            d = torch.tensor([tile_grad_out(int(i) // TILE) for i in range(begin, end)], dtype=torch.float64)
            xhat = (xs - m64[g]) * r64[g]
            expected = r64[g] * w64[g] * (d - sum_dy64[g] / n - xhat * sum_dy_xhat64[g] / n)
            # exact inputs and statistics: the output's bfloat16 rounding (2^-9) and float32 arithmetic
            torch.testing.assert_close(gi_flat[begin:end].double().cpu(), expected, rtol=8e-3, atol=4e-3,
                                       msg=lambda m: f"{layout} grad_input[{begin}:{end}] ({where}): {m}")
    finally:
        del x, dy
        gc.collect()
