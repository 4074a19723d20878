"""Memory: forward + backward of a large input allocates no more than torch's own group norm does, and
repeated calls do not grow memory.

Peak memory is measured in a fresh child process per implementation and layout, as the growth of its
peak resident set size (VmHWM, the per-process figure behind getrusage's ru_maxrss) over a baseline taken
once the input, grad_out and parameters exist and a small warm-up call has paid for the one-time set-up
(thread pools, op registration, autograd engine).
"""
import gc
import json
import subprocess
import sys
import textwrap
import weakref

import pytest
import torch

import groupnorm_ext

MiB = 2 ** 20
SHAPE = (4, 64, 512, 512)              # 2^26 float32 elements: 256 MiB per tensor
TENSOR_BYTES = 4 * 64 * 512 * 512 * 4
SLACK = 16 * MiB                       # allocator and page-granularity noise

_CHILD = textwrap.dedent("""
    import gc, json, resource, sys
    import torch
    import torch.nn.functional as F
    import groupnorm_ext

    impl, layout, mode = sys.argv[1:4]
    shape = tuple(int(s) for s in sys.argv[4].split("x"))
    torch.set_num_threads(2)
    fn = groupnorm_ext.group_norm if impl == "ours" else F.group_norm
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format

    def maxrss():
        # VmHWM, the peak RSS of this process's address space. Not getrusage's ru_maxrss: Linux carries the
        # high-water mark of the pre-exec image (a copy of the parent, here pytest, which may have peaked at
        # gigabytes) into ru_maxrss, which would hide everything the child does.
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

    def rss():
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * resource.getpagesize()

    def step(x, w, b, gy):
        out = fn(x, 8, w, b, 1e-5)
        out.backward(gy)
        del out
        x.grad = None; w.grad = None; b.grad = None

    # warm-up on a small input: one-time allocations do not count
    xs = torch.randn(2, 64, 8, 8).contiguous(memory_format=fmt).requires_grad_(True)
    ws, bs = torch.ones(64, requires_grad=True), torch.zeros(64, requires_grad=True)
    for _ in range(3):
        step(xs, ws, bs, torch.ones_like(xs))

    gen = torch.Generator().manual_seed(0)
    # filled in place: no temporary may lift the high-water mark above the baseline
    x = torch.empty(shape, memory_format=fmt).normal_(generator=gen).requires_grad_(True)
    gy = torch.empty(shape, memory_format=fmt).normal_(generator=gen)
    w = torch.ones(shape[1], requires_grad=True)
    b = torch.zeros(shape[1], requires_grad=True)
    gc.collect()
    result = {}
    if "peak" in mode:
        base = maxrss()
        result["baseline_gap"] = base - rss()   # ~0 when the baseline high-water mark is the current size
        out = fn(x, 8, w, b, 1e-5)
        out.backward(gy)
        result["peak_growth"] = maxrss() - base
        result["grad_ok"] = bool(torch.isfinite(x.grad).all())
        del out
    del x, gy
    x = gy = None
    gc.collect()
    if "repeat" in mode:
        # 20 calls on a 64 MiB input: a leaked output or gradient would add 64 MiB per call
        x = torch.empty(4, 64, 256, 256, memory_format=fmt).normal_(generator=gen).requires_grad_(True)
        gy = torch.empty(4, 64, 256, 256, memory_format=fmt).normal_(generator=gen)
        step(x, w, b, gy)
        step(x, w, b, gy)
        gc.collect()
        rss0, max0 = rss(), maxrss()
        for _ in range(20):
            step(x, w, b, gy)
        gc.collect()
        result["rss_growth_large"] = rss() - rss0
        result["maxrss_growth_large"] = maxrss() - max0
        del x, gy
        gc.collect()
        # many small calls: a per-call leak of even a few hundred bytes adds up
        xs = torch.randn(2, 32, 16, 16).contiguous(memory_format=fmt).requires_grad_(True)
        ws, bs = torch.ones(32, requires_grad=True), torch.zeros(32, requires_grad=True)
        gys = torch.randn(2, 32, 16, 16).contiguous(memory_format=fmt)
        for _ in range(200):
            step(xs, ws, bs, gys)
        gc.collect()
        rss1 = rss()
        for _ in range(2000):
            step(xs, ws, bs, gys)
        gc.collect()
        result["rss_growth_small"] = rss() - rss1
    print(json.dumps(result))
""")


def start_child(impl, layout, mode, shape=SHAPE):
    """Start a measurement child; mode is "peak", "repeat" or "peak+repeat"."""
    return subprocess.Popen([sys.executable, "-c", _CHILD, impl, layout, mode, "x".join(map(str, shape))],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish_child(proc, what):
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    assert proc.returncode == 0, f"{what} child failed ({proc.returncode}):\n{stderr[-3000:]}"
    return json.loads(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def measurements():
    """{(impl, layout): child result}; ours also runs the repeated-call checks. Two children at a time
    (each measures only its own process, so running side by side does not disturb the figures)."""
    jobs = [(impl, layout, "peak+repeat" if impl == "ours" else "peak")
            for layout in ("contiguous", "channels_last") for impl in ("ours", "torch")]
    out = {}
    for i in range(0, len(jobs), 2):
        running = [(job, start_child(*job)) for job in jobs[i:i + 2]]
        for (impl, layout, mode), proc in running:
            out[(impl, layout)] = finish_child(proc, f"{impl}/{layout}/{mode}")
    return out


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_forward_backward_peak_memory_is_no_more_than_torch(layout, measurements):
    ours, theirs = measurements[("ours", layout)], measurements[("torch", layout)]
    assert ours["grad_ok"] and theirs["grad_ok"]
    for r in (ours, theirs):
        assert r["baseline_gap"] <= SLACK, f"baseline peak above the current size: measurement invalid {r}"
    mib = {k: round(v["peak_growth"] / MiB, 1) for k, v in (("ours", ours), ("torch", theirs))}
    # the output and grad_input must exist: anything far below 2 tensors means the measurement is broken
    assert ours["peak_growth"] >= 1.5 * TENSOR_BYTES, f"implausible measurement {mib}"
    assert ours["peak_growth"] <= theirs["peak_growth"] + SLACK, (
        f"{layout}: forward + backward peak growth ours {mib['ours']} MiB > torch {mib['torch']} MiB "
        f"(+{SLACK // MiB} MiB slack); one tensor of the input's size is {TENSOR_BYTES // MiB} MiB")


@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_repeated_calls_do_not_grow_memory(layout, measurements):
    r = measurements[("ours", layout)]
    mib = {k: round(v / MiB, 2) for k, v in r.items() if k.endswith(("growth_large", "growth_small"))}
    assert r["rss_growth_large"] <= SLACK, f"20 forward+backward calls (64 MiB tensors) grew RSS: {mib}"
    assert r["maxrss_growth_large"] <= SLACK, f"the peak grew over 20 identical calls: {mib}"
    assert r["rss_growth_small"] <= 2 * MiB, f"2000 small forward+backward calls grew RSS: {mib}"


def test_autograd_graph_releases_tensors():
    """No reference cycle or leaked reference keeps the input, output or saved statistics alive."""
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    gn = groupnorm_ext.GroupNorm(4, 8)
    out = gn(x)
    out.sum().backward()
    refs = [weakref.ref(t) for t in (x, out, x.grad)]
    del x, out
    gc.collect()
    assert refs[0]() is None and refs[1]() is None and refs[2]() is None, "a tensor outlived its last reference"
    # without backward (graph built, never run): the graph dies with the output
    x = torch.randn(2, 8, 5, 5, requires_grad=True)
    out = gn(x)
    rx, ro = weakref.ref(x), weakref.ref(out)
    del x, out
    gc.collect()
    assert rx() is None and ro() is None, "an unused autograd graph kept its tensors alive"
