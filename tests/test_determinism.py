"""Determinism on the CPU: repeated runs, any intra-op thread count and a fresh process all give bitwise
identical outputs, statistics and gradients (tests/test_cuda.py::test_deterministic covers CUDA).

Shapes are chosen so that groups span many chunks of the plan and the work splits across threads.
"""
import hashlib
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import groupnorm_ext
from reference import make_affine, make_grad_out, make_input

ops = torch.ops.groupnorm_ext

CASES = [
    pytest.param((2, 64, 33, 35), 8, "contiguous", id="2x64x33x35-G8-contiguous"),
    pytest.param((2, 64, 33, 35), 8, "channels_last", id="2x64x33x35-G8-channels_last"),
    pytest.param((1, 3, 200003), 1, "contiguous", id="1x3x200003-G1-one_long_group"),
    pytest.param((2, 16, 5, 17, 19), 4, "channels_last_3d", id="2x16x5x17x19-G4-channels_last_3d"),
    pytest.param((3, 12, 1001), 3, "misaligned", id="3x12x1001-G3-misaligned"),
    pytest.param((3, 12, 1001), 12, "strided", id="3x12x1001-G12-strided"),
    pytest.param((64, 32), 8, "contiguous", id="64x32-G8-rank2"),
    # channels_last backward split into 8 row chunks a sample on 2+ threads (3 samples do not
    # balance 2 threads): both threads combine the chunk partials, a range of (n, c) each that
    # crosses sample boundaries (0..575, 576..1151 of 3 x 384)
    pytest.param((3, 384, 32, 32), 32, "channels_last", id="3x384x32x32-G32-channels_last-split"),
]
DTYPES = [pytest.param(d, id=str(d)[6:]) for d in (torch.float32, torch.float64, torch.float16, torch.bfloat16)]


def run_once(x, G, w, b, gy):
    """(out, mean, rstd, grad_input, grad_weight, grad_bias) from fresh leaves."""
    xx = x.detach().clone() if x.is_contiguous() else x.detach()
    xx.requires_grad_(True)
    ww, bb = (t.detach().clone().requires_grad_(True) for t in (w, b))
    out, mean, rstd = ops.group_norm_forward(x, G, w, b, 1e-5, "identity")
    y = groupnorm_ext.group_norm(xx, G, ww, bb)
    y.backward(gy)
    assert torch.equal(y.detach(), out), "group_norm and group_norm_forward disagree"
    return out, mean, rstd, xx.grad, ww.grad, bb.grad


NAMES = ("output", "mean", "rstd", "grad_input", "grad_weight", "grad_bias")


def assert_bitwise_equal(a, b, what):
    for name, u, v in zip(NAMES, a, b):
        assert u.dtype == v.dtype and u.shape == v.shape
        assert torch.equal(u.contiguous().view(torch.uint8), v.contiguous().view(torch.uint8)), (
            f"{what}: {name} differs bitwise (max abs diff {(u.double() - v.double()).abs().max().item():.3g})")


def inputs(shape, G, layout, dtype):
    x = make_input(shape, dtype, layout, seed=31)
    w, b = make_affine(shape[1], dtype, seed=32)
    gy = make_grad_out(shape, dtype, layout, seed=33)
    return x, w, b, gy


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,G,layout", CASES)
def test_repeated_runs_are_bitwise_identical(shape, G, layout, dtype):
    x, w, b, gy = inputs(shape, G, layout, dtype)
    first = run_once(x, G, w, b, gy)
    for i in range(3):
        assert_bitwise_equal(first, run_once(x, G, w, b, gy), f"run {i + 2} vs run 1")


@pytest.mark.parametrize("dtype", [pytest.param(torch.float32, id="float32"),
                                   pytest.param(torch.bfloat16, id="bfloat16")])
@pytest.mark.parametrize("shape,G,layout", CASES)
def test_thread_count_does_not_change_bits(shape, G, layout, dtype):
    x, w, b, gy = inputs(shape, G, layout, dtype)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        base = run_once(x, G, w, b, gy)
        for n in (2, 3, 4, 7):
            torch.set_num_threads(n)
            assert_bitwise_equal(base, run_once(x, G, w, b, gy), f"{n} threads vs 1 thread")
    finally:
        torch.set_num_threads(saved)


_PROBE = textwrap.dedent("""
    import hashlib, sys
    import torch
    sys.path.insert(0, {tests!r})
    import groupnorm_ext
    from test_determinism import CASES, inputs, run_once
    for threads in (1, 2):
        torch.set_num_threads(threads)
        for case in CASES:
            shape, G, layout = case.values
            for dtype in (torch.float32, torch.bfloat16):
                x, w, b, gy = inputs(shape, G, layout, dtype)
                h = hashlib.sha256()
                for t in run_once(x, G, w, b, gy):
                    h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
                print(threads, case.id, str(dtype)[6:], h.hexdigest())
""")


def digests_here():
    out = {}
    for case in CASES:
        shape, G, layout = case.values
        for dtype in (torch.float32, torch.bfloat16):
            h = hashlib.sha256()
            x, w, b, gy = inputs(shape, G, layout, dtype)
            for t in run_once(x, G, w, b, gy):
                h.update(t.contiguous().view(torch.uint8).numpy().tobytes())
            out[(case.id, str(dtype)[6:])] = h.hexdigest()
    return out


def test_fresh_processes_give_the_same_bits():
    """A fresh process (other heap contents, other thread pools), with 1 and with 2 threads, reproduces this
    process's bits: nothing depends on uninitialized memory or on scheduling."""
    here = digests_here()
    code = _PROBE.format(tests=os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"probe failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    there = {"1": {}, "2": {}}
    for line in proc.stdout.splitlines():
        threads, cid, dt, digest = line.split()
        there[threads][(cid, dt)] = digest
    for threads, digests in there.items():
        assert digests.keys() == here.keys()
        diff = [k for k in here if here[k] != digests[k]]
        assert not diff, f"a fresh process with {threads} thread(s) differs for {diff}"


# Channels-last batches whose schedule changes with N on 2 or 3 threads: per-sample fused (N = 4), split or
# strips of a few groups' channels (N = 1, 3: run_strips), including the float sums redone in double for some
# channels only (tiny spreads); 4x320x48x48 (samples past a 1 MiB L2, strips too narrow) splits at every N.
BATCH_CASES = [
    pytest.param((4, 1280, 8, 8), 32, id="4x1280x8x8-G32"),
    pytest.param((4, 640, 16, 16), 32, id="4x640x16x16-G32"),
    pytest.param((4, 512, 3, 5), 4, id="4x512x3x5-G4"),
    pytest.param((4, 2560, 8, 8), 32, id="4x2560x8x8-G32"),
    pytest.param((4, 320, 24, 24), 32, id="4x320x24x24-G32"),
    pytest.param((4, 320, 48, 48), 32, id="4x320x48x48-G32"),
]


@pytest.mark.parametrize("spread", ["normal", "tiny"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,G", BATCH_CASES)
def test_batch_does_not_change_a_samples_bits(shape, G, dtype, spread):
    """A sample's output, mean, rstd and grad_input are bitwise the same alone, in a batch of 2 or 3, or of 4,
    on 2 and 3 threads: every schedule makes the same chunks, per-channel sums and folds."""
    x = make_input(shape, dtype, "channels_last", seed=41)
    if spread == "tiny":  # the upper half's float deviation sums mostly untrusted (every third channel fine),
        base = torch.float64 if dtype == torch.float64 else torch.float32
        x = x.to(base)
        C = shape[1]
        tiny = x.clone()
        tiny[:, C // 2:] = x[:, C // 2:] * 1e-13 + 3e-12
        tiny[:, C // 2::3] = x[:, C // 2::3]
        x = tiny.to(dtype).contiguous(memory_format=torch.channels_last)
    w, b = make_affine(shape[1], dtype, seed=42)
    gy = make_grad_out(shape, dtype, "channels_last", seed=43)
    if spread == "tiny":  # and the upper half's gradient sums under the float floor (1e-30), every third fine
        base = torch.float64 if dtype == torch.float64 else torch.float32
        C = shape[1]
        small = gy.to(base)
        small[:, C // 2:] *= 1e-33
        small[:, C // 2::3] = gy[:, C // 2::3].to(base)
        gy = small.to(dtype).contiguous(memory_format=torch.channels_last)

    def results(n):
        xs, gys = (t[:n].contiguous(memory_format=torch.channels_last) for t in (x, gy))
        out, mean, rstd = ops.group_norm_forward(xs, G, w, b, 1e-5, "identity")
        grad_input = ops.group_norm_backward(gys, xs, mean, rstd, w, b, G, "identity", [True, False, False])[0]
        return out, mean, rstd, grad_input

    saved = torch.get_num_threads()
    try:
        for threads in (2, 3):
            torch.set_num_threads(threads)
            whole = results(shape[0])
            for n in (1, 2, 3):
                part = results(n)
                for name, u, v in zip(NAMES, whole, part):
                    u = u[:n].contiguous()
                    assert torch.equal(u.view(torch.uint8), v.contiguous().view(torch.uint8)), (
                        f"{threads} threads, the first {n} of {shape[0]} samples alone: {name} differs bitwise "
                        f"(max abs diff {(u.double() - v.double()).abs().max().item():.3g})")
    finally:
        torch.set_num_threads(saved)
