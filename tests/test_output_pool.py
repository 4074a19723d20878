"""The CPU output pool (csrc/cpu/output_pool.h): outputs of 128 KiB and up come from cached mappings
(huge pages from 32 MiB) that a later call of the same size reuses. A reused buffer still holds the previous tensor's
values, so these tests poison outputs before freeing them and check that every element is rewritten;
they also check the bounds (no buffer over 256 MiB is kept), empty_cache() and the off switch."""
import os
import subprocess
import sys
import textwrap
import threading

import pytest
import torch
import torch.nn.functional as F

import groupnorm_ext
from groupnorm_ext import _C

MiB = 2 ** 20
# 2 * 32 * 64^3 float32 = 64 MiB: well above the pool's 128 KiB threshold
LARGE = (2, 32, 64, 64, 64)


@pytest.fixture(autouse=True)
def empty_pool():
    groupnorm_ext.empty_cache()
    yield
    groupnorm_ext.empty_cache()


def large_input(layout, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(LARGE, generator=g).to(dtype) * 3 + 1
    return x.contiguous(memory_format=torch.channels_last_3d) if layout == "channels_last_3d" else x


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_reused_forward_buffer_is_fully_rewritten(layout, dtype):
    x = large_input(layout, dtype)
    w, b = torch.randn(32).to(dtype), torch.randn(32).to(dtype)
    first = groupnorm_ext.group_norm(x, 8, w, b)
    expected = first.clone()
    ptr = first.data_ptr()
    first.fill_(float("nan"))          # poison, then hand the buffer back
    del first
    assert _C._cached_output_bytes() >= x.numel() * x.element_size()
    again = groupnorm_ext.group_norm(x, 8, w, b)
    assert again.data_ptr() == ptr, "same-size output did not reuse the cached buffer"
    assert again.is_contiguous(memory_format=torch.channels_last_3d if layout != "contiguous"
                               else torch.contiguous_format)
    assert torch.equal(again, expected)
    torch.testing.assert_close(again.float(), F.group_norm(x.float(), 8, w.float(), b.float()),
                               atol=5e-2 if dtype == torch.bfloat16 else 1e-4, rtol=1e-2)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_reused_backward_buffer_is_fully_rewritten(layout):
    x = large_input(layout).requires_grad_(True)
    w, b = torch.randn(32, requires_grad=True), torch.randn(32, requires_grad=True)
    gy = torch.randn_like(x)
    gx1, gw1, gb1 = torch.autograd.grad(groupnorm_ext.group_norm(x, 8, w, b), (x, w, b), gy)
    expected, ptr = gx1.clone(), gx1.data_ptr()
    out = groupnorm_ext.group_norm(x, 8, w, b)    # takes the forward's own freed buffer first
    gx1.fill_(float("nan"))
    del gx1                                       # the only free buffer now: grad_input's next
    gx2, gw2, gb2 = torch.autograd.grad(out, (x, w, b), gy)
    assert gx2.data_ptr() == ptr, "grad_input did not reuse the poisoned buffer"
    assert torch.equal(gx2, expected) and torch.equal(gw2, gw1) and torch.equal(gb2, gb1)


def test_resize_of_a_pooled_output():
    y = groupnorm_ext.group_norm(large_input("contiguous"), 8)
    head = y.flatten()[:1000].clone()
    y.resize_(3, 7)                               # shrink: same storage
    y.resize_(2 ** 25)                            # grow past 64 MiB: a new buffer, contents kept
    assert torch.equal(y[:1000], head)
    y.untyped_storage().resize_(0)
    del y
    assert _C._cached_output_bytes() >= 64 * MiB


def test_slightly_larger_cached_buffer_is_reused():
    y = groupnorm_ext.group_norm(torch.randn(2, 32, 64, 64, 68), 8)   # 68 MiB
    ptr = y.data_ptr()
    del y
    x = large_input("contiguous")                                     # 64 MiB: fits in 68
    again = groupnorm_ext.group_norm(x, 8)
    assert again.data_ptr() == ptr
    torch.testing.assert_close(again, F.group_norm(x, 8), atol=1e-4, rtol=1e-4)


def test_empty_cache_releases_everything():
    x = large_input("contiguous")
    y = groupnorm_ext.group_norm(x, 8)
    nbytes = y.numel() * y.element_size()
    del y
    assert _C._cached_output_bytes() == nbytes     # 64 MiB: a multiple of the 2 MiB mapping unit
    assert groupnorm_ext.empty_cache() == nbytes
    assert _C._cached_output_bytes() == 0
    assert groupnorm_ext.empty_cache() == 0


def test_small_outputs_bypass_the_pool():
    y = groupnorm_ext.group_norm(torch.randn(2, 32, 16, 16), 8)   # 64 KiB: under the 128 KiB threshold
    del y
    assert _C._cached_output_bytes() == 0


@pytest.mark.parametrize("shape,mapped", [((1, 32, 1024), 128 * 2 ** 10),        # 128 KiB: the threshold
                                          ((4, 1280, 8, 8), 1280 * 2 ** 10),     # 1.25 MiB: 20 units of 64 KiB
                                          ((4, 1300, 8, 8), 1344 * 2 ** 10)])    # rounded up to 64 KiB
def test_outputs_under_2_mib_are_pooled_in_64_kib_units(shape, mapped):
    """glibc's heap-top trimming re-faulted 1.3 MB outputs on every fwd+bwd call; the pool keeps them,
    mapped in 64 KiB steps (a 2 MiB unit would waste most of a small buffer)."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(shape, generator=g)
    w, b = torch.randn(shape[1], generator=g), torch.randn(shape[1], generator=g)
    first = groupnorm_ext.group_norm(x, 4, w, b)
    expected, ptr = first.clone(), first.data_ptr()
    first.fill_(float("nan"))
    del first
    assert _C._cached_output_bytes() == mapped
    again = groupnorm_ext.group_norm(x, 4, w, b)
    assert again.data_ptr() == ptr and torch.equal(again, expected)


def test_at_most_256_buffers_are_kept():
    x = torch.randn(1, 32, 1024)                                      # 128 KiB outputs
    outs = [groupnorm_ext.group_norm(x, 8) for _ in range(300)]
    assert len({y.data_ptr() for y in outs}) == 300
    del outs
    assert _C._cached_output_bytes() == 256 * 128 * 2 ** 10


def test_buffers_over_256_mib_are_not_kept():
    x = torch.randn(1, 4, 8192, 4224).to(torch.bfloat16)      # 264 MiB
    y = groupnorm_ext.group_norm(x, 2)
    assert torch.isfinite(y[0, :, :4]).all()
    del y
    assert _C._cached_output_bytes() == 0


def test_outputs_from_many_threads():
    """Threads take and return buffers of one size concurrently: every result right, no buffer shared."""
    x = large_input("contiguous")
    w, b = torch.randn(32), torch.randn(32)
    expected = groupnorm_ext.group_norm(x, 8, w, b)
    errors = []

    def worker():
        for _ in range(3):
            y = groupnorm_ext.group_norm(x, 8, w, b)
            if not torch.equal(y, expected):
                errors.append("mismatch")
            y.fill_(float("nan"))
            del y

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert _C._cached_output_bytes() <= 4 * expected.numel() * expected.element_size()


def test_pool_off_switch():
    code = textwrap.dedent("""
        import torch, groupnorm_ext
        from groupnorm_ext import _C
        x = torch.randn(2, 32, 64, 64, 64)
        y = groupnorm_ext.group_norm(x, 8)
        ok = torch.allclose(y, torch.nn.functional.group_norm(x, 8), atol=1e-4)
        del y
        print(ok, _C._cached_output_bytes())
    """)
    env = {**os.environ, "GROUPNORM_EXT_OUTPUT_POOL": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["True", "0"]


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_medium_outputs_are_pooled_and_rewritten(memory_format):
    """2 MiB (the first size in 2 MiB units) to a few MiB: diffusion-UNet activations."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(1, 128, 64, 64, generator=g).contiguous(memory_format=memory_format)   # 2 MiB
    w, b = torch.randn(128, generator=g), torch.randn(128, generator=g)
    first = groupnorm_ext.group_norm(x, 32, w, b)
    expected, ptr = first.clone(), first.data_ptr()
    first.fill_(float("nan"))
    del first
    assert _C._cached_output_bytes() == 2 * MiB
    again = groupnorm_ext.group_norm(x, 32, w, b)
    assert again.data_ptr() == ptr and again.is_contiguous(memory_format=memory_format)
    assert torch.equal(again, expected)


@pytest.mark.parametrize("layout", ["contiguous", "channels_last_3d"])
def test_fused_activation_backward_on_a_poisoned_pool_buffer(layout):
    """The backward of a fused activation forms dL/dz in a pooled buffer, piece by piece: with the
    buffer handed over full of NaN, every element must still be formed before it is read."""
    x = large_input(layout)
    w, b = torch.randn(32), torch.randn(32)
    gy = torch.randn_like(x)
    ops = torch.ops.groupnorm_ext
    _, mean, rstd = ops.group_norm_forward(x, 8, w, b, 1e-5, "silu")
    expected = ops.group_norm_backward(gy, x, mean, rstd, w, b, 8, "silu", [True, True, True])
    for mask in ([True, True, True], [False, True, True]):
        groupnorm_ext.empty_cache()
        # two outputs of x's size back to the pool full of NaN: grad_input takes one, dL/dz the other
        poison = [groupnorm_ext.group_norm(x, 8) for _ in range(2)]
        for t in poison:
            t.fill_(float("nan"))
        del poison, t
        got = ops.group_norm_backward(gy, x, mean, rstd, w, b, 8, "silu", mask)
        for wanted, g, e in zip(mask, got, expected):
            assert (g is None) if not wanted else torch.isfinite(g).all() and torch.allclose(g, e, rtol=1e-4, atol=1e-3)
