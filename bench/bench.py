"""Benchmark groupnorm_ext.group_norm against torch.nn.functional.group_norm.

    python bench/bench.py [--quick | --sweep] [--device cpu|cuda] [--save NAME] [--compare OLD.json]
                          [--out bench/results/NAME.md] [--compile] [--filter REGEX]

For every case (bench/shapes.py) it checks ours against torch with a loose tolerance, then times the
forward and forward+backward passes of both (median after warm-up; CUDA: events, L2 flushed before each
call), measures copy bandwidth in the same run, and writes a Markdown table (+ PNG when matplotlib is
installed). --save keeps the raw samples as JSON; --compare prints old vs new times from such a file.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import subprocess
import sys
import time

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, BENCH_DIR)

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import report  # noqa: E402
import shapes  # noqa: E402
import timing  # noqa: E402

EPS = 1e-5
RESULTS_DIR = os.path.join(BENCH_DIR, "results")
# Correctness guard: max |ours - torch| / max |torch| per output, per input dtype. Loose on purpose:
# it catches a wrong kernel (errors of order 1), not last-bit differences in reduction order.
# torch's op for each fused activation of groupnorm_ext (the "fused" set's baseline).
TORCH_ACTIVATIONS = {
    "silu": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
}
TOLERANCE = {"fp64": 1e-6, "fp32": 1e-3, "fp16": 5e-3, "bf16": 4e-2}
# Fraction of all CPU time used by other processes (sampled for 0.5 s before and after the run) above
# which the run warns that its timings are skewed.
BUSY_WARN_FRACTION = 0.2
# Names under which the extension may expose the CPU kernel it dispatched to, most likely first.
CPU_PATH_FUNCTIONS = ("cpu_capability", "cpu_path", "cpu_kernel", "kernel_path")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="4 small/medium cases, ~0.3 s of calls per timing (< 60 s)")
    p.add_argument("--sweep", action="store_true",
                   help="the diffusion-UNet grid instead of the sets (N 1-16, C 128-1280, 8-128 px, G 32; "
                   "shapes.sweep_cases), ~0.3 s of calls per timing as --quick")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--save", metavar="NAME", help="write raw results as JSON: bench/results/NAME.json, "
                   "or the path itself when NAME ends in .json")
    p.add_argument("--compare", metavar="OLD.json", help="print old vs new times from a --save file")
    p.add_argument("--out", metavar="FILE.md", help="Markdown output (default bench/results/<machine>.md, "
                   "<machine>-quick.md with --quick, <machine>-sweep.md with --sweep); the PNG goes next to it")
    p.add_argument("--compile", action="store_true", help="also time torch.compile(F.group_norm) (slow)")
    p.add_argument("--filter", metavar="REGEX", help="only cases whose label matches, e.g. 'bf16|seed'")
    p.add_argument("--reps", type=int,
                   help="fixed number of timed calls (default: adaptive, ~1.5 s per timing)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads before running (CPU)")
    return p.parse_args(argv)


def import_ext():
    try:
        import groupnorm_ext
    except ImportError as e:
        sys.exit(f"cannot import groupnorm_ext ({e}); build it first: pip install --no-build-isolation -e .")
    return groupnorm_ext


def ext_cpu_path(ext) -> str:
    """The CPU path the extension reports, or torch's capability when it reports none."""
    for holder in (ext, getattr(ext, "_C", None)):
        for name in CPU_PATH_FUNCTIONS:
            attr = getattr(holder, name, None)
            if attr is not None:
                return str(attr() if callable(attr) else attr)
    return f"{torch.backends.cpu.get_cpu_capability()} (not exposed by groupnorm_ext; torch's capability)"


def _built_with_cuda(ext) -> str:
    fn = getattr(ext, "built_with_cuda", None)
    return str(fn()) if callable(fn) else "unknown"


def cpu_busy_fraction(seconds: float = 0.5) -> float | None:
    """Fraction of all CPUs' time that other processes keep busy over `seconds` (from /proc/stat, less
    this process's own CPU time, e.g. OpenMP workers still spinning; None where /proc is unavailable)."""
    def snapshot():
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:]]
        own = os.times()
        return sum(ticks), ticks[3] + ticks[4], own.user + own.system  # total, idle + iowait, own (s)

    try:
        hz = os.sysconf("SC_CLK_TCK")
        total0, idle0, own0 = snapshot()
        time.sleep(seconds)
        total1, idle1, own1 = snapshot()
    except (OSError, ValueError, IndexError):
        return None
    total = max(total1 - total0, 1)
    busy = total - (idle1 - idle0) - (own1 - own0) * hz
    return min(max(busy / total, 0.0), 1.0)


def warn_if_busy(busy: float | None) -> float | None:
    if busy is not None and busy > BUSY_WARN_FRACTION:
        print(f"WARNING: other processes use {100 * busy:.0f}% of the CPUs: the timings are skewed",
              file=sys.stderr)
    return busy


def machine_name(device: str) -> str:
    if device == "cuda":
        return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name().lower()).strip("-")
    return f"cpu-{len(os.sched_getaffinity(0))}core"


def device_description(device: str) -> str:
    if device == "cuda":
        props = torch.cuda.get_device_properties(0)
        return f"{props.name}, {props.multi_processor_count} SMs, {props.total_memory / 2**30:.0f} GiB"
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {len(os.sched_getaffinity(0))} cores"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True,
                             text=True, check=True).stdout.strip()
        # A previous run's tables and plots (bench/results) do not make the code dirty.
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", ":/",
                                ":(top,exclude)bench/results"], cwd=BENCH_DIR,
                               capture_output=True, text=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "no commit"


def make_inputs(case: shapes.Case, device: str):
    """x (mean 0.5, std 2, in the case's layout), affine weight/bias in the input dtype, fixed grad_out."""
    gen = torch.Generator(device).manual_seed(0)
    c = case.shape[1]

    def randn(shape):
        return torch.randn(shape, generator=gen, device=device)

    x = randn(case.shape).mul_(2).add_(0.5).to(dtype=case.torch_dtype, memory_format=case.memory_format)
    weight = randn((c,)).mul_(0.1).add_(1).to(case.torch_dtype)
    bias = randn((c,)).mul_(0.1).to(case.torch_dtype)
    grad_out = randn(case.shape).to(dtype=case.torch_dtype, memory_format=case.memory_format)
    return x, weight, bias, grad_out


def _rel_err(ours: torch.Tensor | None, ref: torch.Tensor | None) -> float:
    if ours is None or ref is None:
        return 0.0 if ours is None and ref is None else float("inf")
    if ref.numel() == 0:
        return 0.0
    acc = torch.float64 if ref.dtype == torch.float64 else torch.float32
    ref_a = ref.to(acc)
    scale = ref_a.abs().max().item()
    return (ours.to(acc) - ref_a).abs().max().item() / max(scale, 1e-30)


def check_case(case, ours_fn, torch_fn, x, weight, bias, grad_out) -> dict[str, str]:
    """Ours vs torch before timing: {'fwd': 'ok' | 'MISMATCH ...', 'fwd+bwd': ...}."""
    tol = TOLERANCE[case.dtype]
    result = {}
    with torch.no_grad():
        out, ref = ours_fn(x, case.groups, weight, bias, EPS), torch_fn(x, case.groups, weight, bias, EPS)
    err = _rel_err(out, ref)
    layout_ok = out.is_contiguous(memory_format=case.memory_format)
    result["fwd"] = "ok" if err <= tol else f"MISMATCH {err:.1e}"
    if not layout_ok:
        result["fwd"] += " (layout not kept)"
    del out, ref

    grads = {}
    for name, fn in (("ours", ours_fn), ("torch", torch_fn)):
        xr, wr, br = (t.detach().requires_grad_() for t in (x, weight, bias))
        grads[name] = torch.autograd.grad(fn(xr, case.groups, wr, br, EPS), (xr, wr, br), grad_out)
    errs = {n: _rel_err(o, r) for n, o, r in zip(("dx", "dw", "db"), grads["ours"], grads["torch"])}
    worst = max(errs, key=errs.get)
    result["fwd+bwd"] = "ok" if errs[worst] <= tol else f"MISMATCH {worst} {errs[worst]:.1e}"
    return result


def time_case(case, impls, timer, policy, x, weight, bias, grad_out) -> tuple[dict, dict]:
    """({(impl, pass): samples in seconds}, {(impl, pass): minor page faults a call, CPU only}) for
    pass in fwd, fwd+bwd. The impls take turns: call by call
    on the CPU, policy.rounds turns on a GPU; every impl makes the same number of calls, sized by the
    slowest one's warm-up. The forward runs under no_grad (inference); the no_grad switch sits
    outside the timed calls."""
    g = case.groups
    xr, wr, br = (t.detach().requires_grad_() for t in (x, weight, bias))
    calls = {
        "fwd": lambda fn: (lambda: fn(x, g, weight, bias, EPS)),
        "fwd+bwd": lambda fn: (lambda: torch.autograd.grad(fn(xr, g, wr, br, EPS), (xr, wr, br), grad_out)),
    }
    samples, faults = {}, {}
    for pass_, make in calls.items():
        with torch.set_grad_enabled(pass_ != "fwd"):
            fns = {name: make(fn) for name, fn in impls.items()}
            estimate = max(timer.warm_up(fn, policy.warmup) for fn in fns.values())
            reps = policy.reps_for(estimate)
            turns = reps if timer.interleave_calls else policy.rounds
            for name, s in timer.take_turns(fns, reps, turns).items():
                samples[(name, pass_)] = s
                if name in timer.faults_per_call:
                    faults[(name, pass_)] = timer.faults_per_call[name]
    return samples, faults


def moved_bytes(case: shapes.Case, pass_: str) -> int:
    """Bytes that must move: fwd reads x and writes y; backward also reads x and dy and writes dx."""
    return case.nbytes * (2 if pass_ == "fwd" else 5)


def run_case(case, ext, timer, policy, args, copy_gbps) -> list[dict]:
    """Ours and torch eager take turns first; torch.compile is compiled after them and then takes
    turns with ours again, and "vs compile" compares the two times of that second pairing.
    Why pairs: each side's calls evict the other's data from the cache, so a side timed on its
    own keeps a warm cache its rival does not (on this 2-core VM: ours fwd+bwd on 2x320x64x64
    1.9 ms alone, 3.5 ms with 64 MB written between calls). Why a second pairing rather than one
    with all three: compiling starts worker processes and the compiled calls disturb the calls
    around them (between the eager ones they made a small CPU fwd+bwd of ours and of torch ~2.4x
    slower), which must not leak into the ours-vs-eager numbers."""
    impls = {"ours": ext.group_norm, "torch": F.group_norm}
    if case.activation != "identity":  # ours fused, torch's unfused composition
        act = case.activation
        impls = {"ours": lambda x, g, w, b, eps: ext.group_norm(x, g, w, b, eps, act),
                 "torch": lambda x, g, w, b, eps: TORCH_ACTIVATIONS[act](F.group_norm(x, g, w, b, eps))}
    x, weight, bias, grad_out = make_inputs(case, args.device)
    checks = check_case(case, impls["ours"], impls["torch"], x, weight, bias, grad_out)
    samples, faults = time_case(case, impls, timer, policy, x, weight, bias, grad_out)
    if args.compile:
        torch._dynamo.reset()  # a fresh cache per case: otherwise the recompile limit falls back to eager
        compiled = torch.compile(impls["torch"], dynamic=False)
        try:  # compile both passes now: a machine without a working C++ compiler fails here
            xr = x.detach().requires_grad_()
            torch.autograd.grad(compiled(xr, case.groups, weight, bias, EPS), xr, grad_out)
            pair, pair_faults = time_case(case, {"ours": impls["ours"], "compile": compiled}, timer, policy, x,
                                          weight, bias, grad_out)
            for pass_ in ("fwd", "fwd+bwd"):
                samples[("compile", pass_)] = pair[("compile", pass_)]
                samples[("ours_with_compile", pass_)] = pair[("ours", pass_)]
                for name, key in (("compile", "compile"), ("ours", "ours_with_compile")):
                    if (name, pass_) in pair_faults:
                        faults[(key, pass_)] = pair_faults[(name, pass_)]
            impls["compile"] = compiled  # only once every sample is in: a failure above leaves the column "-"
        except Exception as e:  # noqa: BLE001  (any compile failure: the column shows "-")
            print(f"    torch.compile failed, no compile column for this case: {type(e).__name__}: {e}"[:300])
    rows = []
    for pass_ in ("fwd", "fwd+bwd"):
        names = list(impls) + (["ours_with_compile"] if "compile" in impls else [])
        med = {name: timing.median(samples[(name, pass_)]) for name in names}
        gbps = moved_bytes(case, pass_) / med["ours"] / 1e9
        rows.append({
            "key": case.key, "set": case.set, "shape": case.shape_str, "groups": case.groups,
            "dtype": case.dtype, "layout": case.layout_str, "pass": pass_,
            "ours_s": med["ours"], "torch_s": med["torch"], "compile_s": med.get("compile"),
            "ours_with_compile_s": med.get("ours_with_compile"),
            "bytes": moved_bytes(case, pass_), "gbps": gbps, "roofline": gbps / copy_gbps,
            "check": checks[pass_], "samples": {name: samples[(name, pass_)] for name in names},
            "faults_per_call": {name: faults[(name, pass_)] for name in names if (name, pass_) in faults},
        })
    return rows


def default_out(machine: str, quick: bool, sweep: bool = False) -> str:
    suffix = "-sweep" if sweep else "-quick" if quick else ""
    return os.path.join(RESULTS_DIR, f"{machine}{suffix}.md")


def save_path(name: str) -> str:
    return name if name.endswith(".json") else os.path.join(RESULTS_DIR, f"{name}.json")


def main(argv=None) -> int:
    args = parse_args(argv)
    sys.stdout.reconfigure(line_buffering=True)  # keep stdout and the stderr progress lines in order
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device is available")
    if args.threads:
        torch.set_num_threads(args.threads)
    ext = import_ext()
    old = report.load_json(args.compare) if args.compare else None  # fail now, not after the timings

    machine = machine_name(args.device)
    cpu_path = ext_cpu_path(ext)
    busy_start = cpu_busy_fraction()
    warn_if_busy(busy_start)
    print(f"machine: {machine} ({device_description(args.device)}); torch {torch.__version__}; "
          f"threads {torch.get_num_threads()}")
    print(f"CPU path: groupnorm_ext: {cpu_path}; torch: {torch.backends.cpu.get_cpu_capability()}")

    policy = timing.QUICK_POLICY if args.quick or args.sweep else timing.FULL_POLICY
    if args.reps:
        policy = timing.RepPolicy(warmup=policy.warmup, min_reps=args.reps, max_reps=args.reps, target_s=0,
                                  rounds=min(policy.rounds, args.reps))
    timer = timing.make_timer(args.device)
    copy_gbps, copy_bytes = timing.copy_bandwidth(timer)
    print(f"copy bandwidth: {copy_gbps:.1f} GB/s")

    cases = shapes.all_cases(args.device, args.quick, args.sweep)
    if args.filter:
        cases = [c for c in cases if re.search(args.filter, c.label)]
    rows, errors = [], []
    for i, case in enumerate(cases, 1):
        label = case.label
        print(f"[{i}/{len(cases)}] {label} ...", file=sys.stderr, flush=True)
        try:
            case_rows = run_case(case, ext, timer, policy, args, copy_gbps)
        except Exception as e:  # noqa: BLE001  (one bad case, e.g. out of memory, must not lose the run)
            msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
            print(f"    ERROR: {msg}", file=sys.stderr)
            errors.append(f"{label}: {msg}")
            continue
        finally:
            if args.device == "cuda":
                torch.cuda.empty_cache()
        rows += case_rows
        for r in case_rows:
            print(f"    {r['pass']:8s} ours {r['ours_s'] * 1e3:9.4f} ms  torch {r['torch_s'] * 1e3:9.4f} ms  "
                  f"{r['torch_s'] / r['ours_s']:5.2f}x  {r['check']}", file=sys.stderr, flush=True)

    meta = {
        "machine": machine, "device": args.device, "device_name": device_description(args.device),
        "date": datetime.datetime.now().isoformat(timespec="seconds"), "git": git_revision(),
        "torch": torch.__version__, "ext_version": getattr(ext, "__version__", "unknown"),
        "threads": torch.get_num_threads(), "ext_cpu_path": cpu_path,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "copy_gbps": copy_gbps, "copy_bytes": copy_bytes, "quick": args.quick, "sweep": args.sweep, "compile": args.compile,
        "filter": args.filter, "built_with_cuda": _built_with_cuda(ext),
        "busy_start": busy_start, "busy_end": warn_if_busy(cpu_busy_fraction()),
        # probed again after the cases: on a VM that shares memory with other guests the
        # bandwidth can drift during a run, and % roofline is against the first probe
        "copy_gbps_end": timing.copy_bandwidth(timer)[0] if rows else None,
        "timing": (f"median of {policy.min_reps} calls" if policy.target_s <= 0
                   else f"median of {policy.min_reps}-{policy.max_reps} calls (~{policy.target_s:g} s)")
        + f" after {policy.warmup} warm-up, "
        + ("ours and torch alternating call by call" if timer.interleave_calls
           else f"ours and torch taking {policy.rounds} turns each")
        + ("; then torch.compile compiled and timed taking turns with ours again (vs compile = compile ms / "
           "ours' time in that pairing)" if args.compile else "")
        + ("; CUDA events, 256 MiB written before each call to flush L2" if args.device == "cuda"
           else "; time.perf_counter"),
    }
    text = report.markdown_report(meta, rows, args.compile)
    if errors:
        text += "\n## errors\n\n" + "\n".join(f"- {e}" for e in errors) + "\n"
    if args.compare:
        text += "\n## comparison\n\n" + report.compare_table(old, meta, rows) + "\n"
    print()
    print(text)

    out = args.out or default_out(machine, args.quick, args.sweep)
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out, "w") as f:
        f.write(text)
    print(f"wrote {out}", file=sys.stderr)
    png = os.path.splitext(out)[0] + ".png"
    if rows and report.save_plot(png, meta, rows):
        print(f"wrote {png}", file=sys.stderr)
    if args.save:
        report.save_json(save_path(args.save), meta, rows)
        print(f"wrote {save_path(args.save)}", file=sys.stderr)
    bad = [r for r in rows if r["check"] != "ok"]
    return 1 if bad or errors else 0


if __name__ == "__main__":
    sys.exit(main())
