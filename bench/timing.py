"""Timing: median wall time of a callable on CPU (perf_counter) or CUDA (events, L2 flushed).

Both timers return the list of per-call samples in seconds; callers take the median.
"""
from __future__ import annotations

import gc
import resource
import statistics
import time
from dataclasses import dataclass

import torch

# Writing this many bytes between timed CUDA calls evicts the whole L2 (50 MB on H100, 60 MB on
# Blackwell), so every call reads its input from HBM as it would inside a network.
L2_FLUSH_BYTES = 256 * 1024 * 1024
# Copy-bandwidth probe: big enough that src + dst are far beyond any CPU LLC or GPU L2.
COPY_BYTES = {"cpu": 256 * 1024 * 1024, "cuda": 1024 * 1024 * 1024}


@dataclass(frozen=True)
class RepPolicy:
    """How many calls to make. With target_s > 0 the count adapts: enough calls to fill target_s,
    clamped to [min_reps, max_reps]; with target_s == 0 exactly min_reps calls are timed."""

    warmup: int = 3
    min_reps: int = 10
    max_reps: int = 200
    target_s: float = 1.0
    # On a GPU the implementations under comparison take turns this many times (ours, torch, ours,
    # torch, ...), each turn timing 1/rounds of the calls. On the CPU they alternate call by call
    # (CpuTimer.interleave_calls): a shared VM slows down by up to 2x for seconds at a time, and only
    # call-by-call turns make such a spell hit both sides alike.
    rounds: int = 3

    def reps_for(self, estimate_s: float) -> int:
        if self.target_s <= 0:
            return self.min_reps
        n = int(self.target_s / max(estimate_s, 1e-9))
        return max(self.min_reps, min(self.max_reps, n))


# Quick: a short time budget per (impl, pass), but enough calls that a burst of noise on a shared VM
# cannot own the median of a 10 us case.
QUICK_POLICY = RepPolicy(warmup=3, min_reps=30, max_reps=300, target_s=0.3, rounds=5)
FULL_POLICY = RepPolicy(warmup=3, min_reps=12, max_reps=1000, target_s=1.5, rounds=3)


def _split(reps: int, turns: int) -> list[int]:
    """reps calls cut into `turns` turns of sizes differing by at most one."""
    turns = max(1, min(turns, reps))
    return [reps // turns + (1 if t < reps % turns else 0) for t in range(turns)]


def minor_page_faults() -> int:
    """Minor page faults of this process so far (all threads)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class CpuTimer:
    """take_turns also counts each fn's minor page faults a call (faults_per_call): a call whose
    output glibc unmapped or trimmed at the last free faults its pages in again, and the kernel
    zeroes every one, which can take longer than the op (torch's CPU fwd+bwd of a 10 MB tensor:
    1.2 ms without, 7.5 ms with ~5000 faults a call, depending on the heap's state)."""
    device = "cpu"
    interleave_calls = True

    def __init__(self):
        self.faults_per_call: dict[str, float] = {}

    def _once(self, fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    def warm_up(self, fn, calls: int) -> float:
        """Runs fn `calls` times (at least once); returns the fastest time."""
        return min(self._once(fn) for _ in range(max(1, calls)))

    def take_turns(self, fns: dict, reps: int, turns: int) -> dict[str, list[float]]:
        """reps timed calls of each fn, the fns taking `turns` turns in order; {name: samples}."""
        out = {name: [] for name in fns}
        faults = {name: 0 for name in fns}
        gc.collect()
        gc.disable()  # a collection in the middle of a 10 us call would be a 100x outlier
        try:
            for k in _split(reps, turns):
                for name, fn in fns.items():
                    before = minor_page_faults()
                    out[name].extend(self._once(fn) for _ in range(k))
                    faults[name] += minor_page_faults() - before
        finally:
            gc.enable()
        self.faults_per_call = {name: faults[name] / max(1, len(out[name])) for name in fns}
        return out

    def samples(self, fn, policy: RepPolicy) -> list[float]:
        reps = policy.reps_for(self.warm_up(fn, policy.warmup))
        return self.take_turns({"fn": fn}, reps, 1)["fn"]


class CudaTimer:
    device = "cuda"
    interleave_calls = False
    faults_per_call: dict[str, float] = {}  # not counted: the host's faults are not the kernels' time

    def __init__(self):
        self._flush = torch.empty(L2_FLUSH_BYTES // 4, dtype=torch.float32, device="cuda")

    def flush_l2(self):
        self._flush.zero_()

    def _run(self, fn, reps: int) -> list[float]:
        starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
        for start, end in zip(starts, ends):
            self.flush_l2()
            start.record()
            fn()
            end.record()
        torch.cuda.synchronize()
        return [s.elapsed_time(e) / 1e3 for s, e in zip(starts, ends)]

    def warm_up(self, fn, calls: int) -> float:
        return min(self._run(fn, max(1, calls)))

    def take_turns(self, fns: dict, reps: int, turns: int) -> dict[str, list[float]]:
        out = {name: [] for name in fns}
        gc.collect()
        gc.disable()
        try:
            for k in _split(reps, turns):
                for name, fn in fns.items():
                    out[name].extend(self._run(fn, k))
        finally:
            gc.enable()
        return out

    def samples(self, fn, policy: RepPolicy) -> list[float]:
        reps = policy.reps_for(self.warm_up(fn, policy.warmup))
        return self.take_turns({"fn": fn}, reps, 1)["fn"]


def make_timer(device: str):
    return CudaTimer() if device == "cuda" else CpuTimer()


def median(samples: list[float]) -> float:
    return statistics.median(samples)


def copy_bandwidth(timer) -> tuple[float, int]:
    """Median GB/s of dst.copy_(src) on a tensor far larger than the caches (read + write counted).
    Returns (GB/s, bytes of src)."""
    nbytes = COPY_BYTES[timer.device]
    src = torch.full((nbytes // 4,), 1.5, dtype=torch.float32, device=timer.device)
    dst = torch.empty_like(src)
    policy = RepPolicy(warmup=2, min_reps=20, max_reps=20, target_s=0,
                       rounds=1)
    t = median(timer.samples(lambda: dst.copy_(src), policy))
    return 2 * nbytes / t / 1e9, nbytes
