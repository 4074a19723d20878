"""The shared plan (csrc/plan.h), exercised through the same functions the CPU and CUDA
executors call: chunking, chunk element offsets, (n, c) of an offset, the fixed-order
Chan combine, and the vector head/body/tail split."""
import itertools

import pytest
import torch

import groupnorm_ext

_C = groupnorm_ext._C

SHAPES = [  # N, C, S, G
    (1, 1, 1, 1), (2, 6, 7, 3), (1, 4, 20000, 2), (3, 64, 9, 32), (2, 12000, 3, 4),
    (1, 8, 8193, 8), (2, 5, 0, 5),
]


@pytest.mark.parametrize("N,C,S,G", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_chunks_cover_every_element_once(N, C, S, G, channels_last):
    offsets = _C._plan_chunk_offsets(N, C, S, G, channels_last)
    assert offsets.numel() == N * C * S
    assert torch.equal(offsets.sort().values, torch.arange(N * C * S))


@pytest.mark.parametrize("N,C,S,G", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_chunk_elements_belong_to_their_group(N, C, S, G, channels_last):
    offsets = _C._plan_chunk_offsets(N, C, S, G, channels_last)
    nc = _C._plan_element_channels(N, C, S, G, channels_last)
    # Reference (n, c) of each memory offset from a real tensor in that layout.
    if channels_last:
        index = torch.arange(N * S * C).reshape(N, S, C).permute(0, 2, 1)
    else:
        index = torch.arange(N * C * S).reshape(N, C, S)
    n_ref = torch.empty(N * C * S, dtype=torch.long)
    c_ref = torch.empty(N * C * S, dtype=torch.long)
    for n, c in itertools.product(range(N), range(C)):
        n_ref[index[n, c].reshape(-1)] = n
        c_ref[index[n, c].reshape(-1)] = c
    assert torch.equal(nc[:, 0], n_ref) and torch.equal(nc[:, 1], c_ref)
    # In plan order, each (n, g) slab's offsets come together and hold exactly its elements.
    slab = (nc[offsets, 0] * G + nc[offsets, 1] // (C // G))
    assert torch.equal(slab, torch.arange(N * G).repeat_interleave((C // G) * S))


@pytest.mark.parametrize("S,per", [(1, 1), (100, 1), (8192, 1), (8193, 1), (10**9, 3), (7, 100000), (5000, 64)])
def test_chunk_plan_sizes(S, per):
    chunk, num = _C._plan_chunk_plan(S, per, 0)
    assert chunk >= 1 and num == -(-S // chunk)
    assert chunk * per <= max(8192, per)  # a chunk stays cache-sized
    assert (num - 1) * chunk < S <= num * chunk


def test_chunk_plan_cap():
    chunk, num = _C._plan_chunk_plan(10**6, 512, 64)
    assert num <= 64 and chunk * num >= 10**6


@pytest.mark.parametrize("length,per,slabs,min_len,align", [
    (0, 1, 4, 1, 8), (1, 1, 1, 1, 8), (100, 1, 3, 1, 8), (33554432, 1, 8, 1, 8), (2**31 + 5, 1, 64, 1, 8),
    (2097152, 64, 2, 1, 1), (4096, 320, 8, 1, 1), (4096, 320, 2, 64, 1), (2097152, 64, 16, 64, 1),
    (7, 100000, 3, 64, 1), (1000003, 24, 5, 1, 1)])
def test_parallel_chunk_plan(length, per, slabs, min_len, align):
    chunk, num = _C._plan_parallel_chunk_plan(length, per, slabs, min_len, align)
    assert chunk >= 1
    if length == 0:
        assert num == 0
        return
    assert num == -(-length // chunk) and (num - 1) * chunk < length <= num * chunk
    default_chunk, _ = _C._plan_chunk_plan(length, per, 0)
    if chunk < length:  # not clamped to the whole slab
        assert chunk % align == 0 and chunk >= min_len
        assert chunk >= default_chunk  # never shorter than the default (cache-sized) plan
        # bounded length (error of shifted sums), unless min_len / the default plan ask more
        assert chunk * per <= max(65536 + align * per, default_chunk * per, min_len * per)
        # few chunks over the whole batch, unless the length cap forces more
        assert num * slabs <= 4096 + slabs or (chunk + align) * per > 65536
    # the same shape always gives the same plan
    assert _C._plan_parallel_chunk_plan(length, per, slabs, min_len, align) == (chunk, num)


@pytest.mark.parametrize("rows,C", [(0, 64), (1, 4), (64, 1280), (64, 640), (256, 640), (256, 1280), (16, 2560),
                                    (1024, 256), (4096, 320), (262144, 64), (3, 100000), (1000003, 7), (25, 1311),
                                    (4096, 640), (4096, 1280), (16384, 320), (1000003, 640)])
@pytest.mark.parametrize("bound", ["forward", "gradient"])
def test_cpu_row_chunk_plan(rows, C, bound):
    """The CPU channels-last chunks: whole rows covering the sample, at least 32K elements and 128 rows a
    chunk (but one) unless the sample is smaller, a power-of-two count (<= 8) while chunks stay within
    the length bound (256K elements; the backward's gradient sums 1M), never over it unless one row is;
    past 8, chunks of equal length but the last, so that 2, 4 or 8 threads taking consecutive chunks get
    even shares."""
    max_elems = 262144 if bound == "forward" else _C._plan_cpu_grad_row_chunk_max_elems
    assert max_elems >= 262144
    chunk, num = _C._plan_cpu_row_chunk_plan(rows, C, 0 if bound == "forward" else max_elems)
    assert chunk >= 1
    if rows == 0:
        assert num == 0
        return
    assert (num - 1) * chunk < rows <= num * chunk
    assert chunk * C <= max(max_elems, C)
    if num <= 8 and chunk * C < max_elems - C:  # not capped by the length bound
        assert num & (num - 1) == 0, "a power of two, so that 2 / 4 / 8 threads get equal shares"
        assert num == 1 or (rows * C // num >= 32768 - C and rows // num >= 128 - 1)
        # as many as allowed: doubling would make chunks under 32K elements or 128 rows, or more than 8
        assert num == 8 or rows * C < 2 * num * 32768 or rows < 2 * num * 128
    if num > 8:
        # only the length bound makes more than 8: then the fewest multiple of 8 chunks within it
        needed = -(-rows // max(1, max_elems // C))
        assert chunk == -(-rows // (-(-needed // 8) * 8))
        for threads in (2, 4, 8):  # at::parallel_for's split: consecutive ranges of ceil(num / threads)
            first_share = min(num, -(-num // threads)) * chunk
            assert first_share - rows / threads <= max(chunk / 2, rows / (32 * threads)), (threads, first_share)
    assert _C._plan_cpu_row_chunk_plan(rows, C, 0 if bound == "forward" else max_elems) == (chunk, num)


@pytest.mark.parametrize("case", ["normal", "offset", "outlier_shift", "constant", "tiny_spread", "huge"])
def test_shifted_moments_accuracy(case):
    # the CUDA chunk kernels' one-pass moments (shift = one of the chunk's values) against
    # fp64 two-pass, at the longest chunk the parallel plan makes and on adversarial data
    g = torch.Generator().manual_seed(7)
    n = 65536
    x = torch.randn(n, generator=g)
    shift_index = 12345
    if case == "offset":
        x = x + 1e4
    elif case == "outlier_shift":  # the shift is the farthest value from the mean
        x[shift_index] = 1e6
    elif case == "constant":
        x = torch.full((n,), 3.25)
    elif case == "tiny_spread":
        x = 1.0 + x * 1e-6
    elif case == "huge":  # squares overflow float32, not double
        x = x * 1e30
    count, mean, m2 = _C._plan_shifted_moments(x, shift_index, 256)
    xd = x.double()
    ref_mean = xd.mean().item()
    ref_m2 = ((xd - ref_mean) ** 2).sum().item()
    assert count == n
    if case == "constant":
        assert mean == 3.25 and m2 == 0.0
        return
    assert abs(mean - ref_mean) <= 1e-12 * max(abs(ref_mean), xd.std().item())
    assert abs(m2 - ref_m2) <= 1e-9 * ref_m2


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("K,L", [(1, 1), (1, 1000), (7, 33), (64, 128), (1000, 3)])
def test_combine_matches_fp64(dtype, K, L):
    torch.manual_seed(K * 1000 + L)
    data = torch.randn(K, L, dtype=torch.float64) * 3 + 1e4  # large offset: no cancellation allowed
    count, mean, m2 = _C._plan_combine_chunks(data.to(dtype))
    ref = data.to(dtype).double()
    assert count == K * L
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    assert mean == pytest.approx(ref.mean().item(), rel=tol)
    assert m2 / (K * L) == pytest.approx(ref.var(unbiased=False).item(), rel=1e-10 if dtype == torch.float64 else 1e-3)


def test_combine_is_order_fixed():
    torch.manual_seed(0)
    data = torch.randn(37, 55)
    assert _C._plan_combine_chunks(data) == _C._plan_combine_chunks(data.clone())


@pytest.mark.parametrize("begin,end,misalign,vec", [(0, 100, 0, 4), (3, 100, 0, 4), (0, 100, 1, 8),
                                                     (5, 7, 2, 8), (0, 3, 0, 4), (10, 10, 3, 4)])
def test_vector_split(begin, end, misalign, vec):
    head_end, body_end = _C._plan_vector_split(begin, end, misalign, vec)
    assert begin <= head_end <= body_end <= end
    assert (body_end - head_end) % vec == 0
    if body_end > head_end:
        assert (misalign + head_end) % vec == 0  # the body starts aligned
    assert head_end - begin < vec and end - body_end < vec or head_end == end


@pytest.mark.parametrize("divisor", [1, 2, 3, 5, 7, 10, 64, 100, 320, 1000, 4095, 4096, 4097, 65535, 2**20 + 7,
                                     2**30, 2**31 - 1, 2**31])
def test_fast_div_matches_integer_division(divisor):
    # what the CUDA elementwise passes use to find channels: exact for numerators < 2^31
    gen = torch.Generator().manual_seed(divisor % 1000)
    n = torch.cat([torch.arange(0, 5000), torch.randint(0, 2**31, (20000,), generator=gen),
                   torch.tensor([2**31 - 1, 2**31 - 2, divisor - 1, divisor, divisor + 1]).clamp(0, 2**31 - 1),
                   torch.arange(1, 50) * divisor]).clamp(max=2**31 - 1)
    assert torch.equal(_C._plan_fast_div(divisor, n), n // divisor)


@pytest.mark.parametrize("N,C,S", [(2, 6, 7), (1, 320, 64), (3, 5, 1), (2, 1, 9000), (1, 8200, 2), (2, 8, 4096),
                                   (1, 3, 5000), (2, 4100, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("tile", [1, 4, 1024, 4096, 8192])
def test_tile_channels(N, C, S, channels_last, tile):
    # the channel of every element as the tiled CUDA passes compute it (one 64-bit division
    # per tile, then a compare or a 32-bit division) equals the layout's true channel
    got = _C._plan_tile_channels(N, C, S, 1, channels_last, tile)
    if channels_last:
        ref = torch.arange(C).repeat(N * S)
    else:
        ref = torch.arange(C).repeat_interleave(S).repeat(N)
    assert torch.equal(got, ref)


@pytest.mark.parametrize("N,C,S,G,vec", [(2, 6, 4, 3, 2), (1, 8, 8, 2, 4), (3, 40, 5, 5, 8), (2, 1280, 3, 32, 4),
                                          (2, 64, 7, 4, 8), (1, 4, 9, 1, 4), (2, 16, 6, 2, 8),
                                          # one element per vector (slabs that do not split into
                                          # vectors): G == C, rows of 20 channels, odd slabs
                                          (3, 8, 5, 8, 1), (2, 640, 3, 32, 1), (2, 10, 7, 5, 1)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_slab_vectors(N, C, S, G, vec, channels_last):
    # the single-read CUDA forward's walk of each slab: every element of the tensor exactly once,
    # each slab holding only its own group's elements, each with its true channel
    got = _C._plan_slab_vectors(N, C, S, G, channels_last, vec)
    offsets, channels = got[:, 0], got[:, 1]
    assert torch.equal(offsets.sort().values, torch.arange(N * C * S))
    x = torch.arange(N * C * S).reshape(N, S, C).permute(0, 2, 1) if channels_last \
        else torch.arange(N * C * S).reshape(N, C, S)
    expected = x.reshape(N * G, -1).sort(dim=1).values  # each slab's offsets
    assert torch.equal(offsets.reshape(N * G, -1).sort(dim=1).values, expected)
    true_channel = (offsets % C) if channels_last else (offsets // S) % C
    assert torch.equal(channels, true_channel)


@pytest.mark.parametrize("K,L", [(1, 5), (2, 3), (5, 7), (64, 3), (1000, 2), (4097, 1)])
def test_combine_by_levels_matches_sequential_tree(K, L):
    # the CUDA finalize runs each level of the tree in parallel: same bits as the loop
    torch.manual_seed(K + L)
    data = torch.randn(K, L, dtype=torch.float64) * 5 + 3e3
    assert _C._plan_combine_chunks_by_levels(data) == _C._plan_combine_chunks(data)
