"""Concurrency: calls from several Python threads at once (each its own inputs, or one shared module) give
the same results as the same calls made one at a time -- bitwise, since results do not depend on
scheduling -- and those results are right."""
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

import groupnorm_ext
from reference import forward_tol, make_affine, make_grad_out, make_input, ref_group_norm, tol

ops = torch.ops.groupnorm_ext

N_THREADS = 8
ITERS = 12

CASES = [
    ((4, 32, 24, 24), 8, "contiguous", torch.float32),
    ((4, 32, 24, 24), 8, "channels_last", torch.float32),
    ((2, 16, 6, 10, 12), 4, "channels_last_3d", torch.bfloat16),
    ((1, 4, 50001), 1, "contiguous", torch.float32),
    ((3, 12, 777), 3, "misaligned", torch.float16),
    ((8, 24), 6, "contiguous", torch.float64),
    ((2, 6, 33, 17), 6, "strided", torch.float32),
    ((2, 64, 16, 16), 32, "permuted", torch.bfloat16),
]


def make_case(i):
    shape, G, layout, dtype = CASES[i]
    x = make_input(shape, dtype, layout, seed=100 + i)
    w, b = make_affine(shape[1], dtype, seed=200 + i)
    gy = make_grad_out(shape, dtype, seed=300 + i)
    return x, G, w, b, gy


def run_case(x, G, w, b, gy):
    xx = x.detach().requires_grad_(True)
    ww, bb = w.detach().requires_grad_(True), b.detach().requires_grad_(True)
    out = groupnorm_ext.group_norm(xx, G, ww, bb)
    grads = torch.autograd.grad(out, (xx, ww, bb), gy)
    _, mean, rstd = ops.group_norm_forward(x, G, w, b, 1e-5, "identity")
    return (out.detach(), mean, rstd) + tuple(grads)


NAMES = ("output", "mean", "rstd", "grad_input", "grad_weight", "grad_bias")


def run_threads(fn, n=N_THREADS):
    barrier = threading.Barrier(n)

    def start(tid):
        barrier.wait()          # all threads enter the ops together
        return fn(tid)

    with ThreadPoolExecutor(n) as pool:
        return [f.result() for f in [pool.submit(start, t) for t in range(n)]]


def test_concurrent_calls_match_sequential_calls():
    inputs = [make_case(i) for i in range(len(CASES))]
    expected = [run_case(*inp) for inp in inputs]           # one at a time, main thread
    for i, (x, G, w, b, gy) in enumerate(inputs):           # ... and those are right
        torch.testing.assert_close(expected[i][0].double(), ref_group_norm(x, G, w, b)[0],
                                   **forward_tol(x.dtype, x, G, w))

    def worker(tid):
        mismatches = []
        for it in range(ITERS):
            i = (tid + it) % len(CASES)
            got = run_case(*inputs[i])
            for name, a, e in zip(NAMES, got, expected[i]):
                if not torch.equal(a, e):
                    diff = (a.double() - e.double()).abs().max().item()
                    mismatches.append(f"thread {tid} iteration {it} case {i} {CASES[i][:3]}: {name} differs (max {diff:.3g})")
        return mismatches

    problems = [m for r in run_threads(worker) for m in r]
    assert not problems, "\n".join(problems[:20])


def test_shared_module_from_many_threads():
    """One GroupNorm module (shared parameters) used by every thread; gradients via autograd.grad."""
    torch.manual_seed(5)
    gn = groupnorm_ext.GroupNorm(8, 32)
    with torch.no_grad():
        gn.weight.copy_(1 + 0.5 * torch.randn(32))
        gn.bias.copy_(0.5 * torch.randn(32))
    xs = [make_input((3, 32, 20, 20), torch.float32, "channels_last" if t % 2 else "contiguous", seed=400 + t)
          for t in range(N_THREADS)]
    gys = [make_grad_out((3, 32, 20, 20), torch.float32, seed=500 + t) for t in range(N_THREADS)]

    def once(t):
        x = xs[t].detach().requires_grad_(True)
        out = gn(x)
        gx, gw, gb = torch.autograd.grad(out, (x, gn.weight, gn.bias), gys[t])
        return out.detach(), gx, gw, gb

    expected = [once(t) for t in range(N_THREADS)]

    def worker(t):
        bad = []
        for it in range(ITERS):
            got = once(t)
            for name, a, e in zip(("output", "grad_input", "grad_weight", "grad_bias"), got, expected[t]):
                if not torch.equal(a, e):
                    bad.append(f"thread {t} iteration {it}: {name} differs")
        return bad

    problems = [m for r in run_threads(worker) for m in r]
    assert not problems, "\n".join(problems[:20])
    # and the sequential results are right
    for t in range(2):
        x = xs[t]
        ref, _, _ = ref_group_norm(x, 8, gn.weight.detach(), gn.bias.detach())
        torch.testing.assert_close(expected[t][0].double(), ref, **tol(torch.float32))


@pytest.mark.parametrize("threads_in_op", [1, 2])
def test_concurrent_calls_with_intra_op_threads(threads_in_op):
    """Python threads on top of the intra-op pool (1 thread: each call inline; 2: nested pools)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(threads_in_op)
    try:
        x = make_input((2, 32, 64, 64), torch.float32, "contiguous", seed=600)
        w, b = make_affine(32, seed=601)
        expected = groupnorm_ext.group_norm(x, 4, w, b)
        results = run_threads(lambda t: [groupnorm_ext.group_norm(x, 4, w, b) for _ in range(6)], n=4)
        for r in results:
            for out in r:
                assert torch.equal(out, expected)
    finally:
        torch.set_num_threads(saved)
