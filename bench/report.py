"""Output of a benchmark run: Markdown tables, a PNG of speed-ups, JSON save/load, old-vs-new compare."""
from __future__ import annotations

import json
import os
import sys

SETS = ("small", "medium", "large", "seed", "fused", "sweep")


def _ms(seconds) -> str:
    if seconds is None:
        return "-"
    ms = seconds * 1e3
    return f"{ms:.4f}" if ms < 0.1 else f"{ms:.3f}" if ms < 10 else f"{ms:.1f}"


def _pct(fraction) -> str:
    return "?" if fraction is None else f"{100 * fraction:.0f}%"


def _ratio(num, den) -> str:
    return "-" if num is None or den is None else f"{num / den:.2f}x"


# A time is marked when its calls took at least this many minor page faults each on average
# (256 KiB of pages zeroed by the kernel a call, at 4 KiB pages): it then includes that zeroing.
FAULTS_MARK = 64


def _ms_marked(row: dict, name: str, seconds) -> str:
    faults = row.get("faults_per_call", {}).get(name, 0)
    return _ms(seconds) + (" †" if seconds is not None and faults >= FAULTS_MARK else "")


def markdown_table(rows: list[dict], with_compile: bool) -> str:
    head = ["shape", "G", "dtype", "layout", "pass", "ours ms", "torch ms", "speed-up", "GB/s", "% roofline"]
    if with_compile:
        head += ["compile ms", "vs compile"]
    head.append("check")
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        cells = [
            r["shape"], str(r["groups"]), r["dtype"], r["layout"], r["pass"],
            _ms_marked(r, "ours", r["ours_s"]), _ms_marked(r, "torch", r["torch_s"]), _ratio(r["torch_s"], r["ours_s"]),
            f"{r['gbps']:.1f}" if r["gbps"] >= 10 else f"{r['gbps']:.2f}", f"{100 * r['roofline']:.0f}%",
        ]
        if with_compile:
            # against ours' time in the same pairing (bench.run_case); older saved runs lack it
            cells += [_ms_marked(r, "compile", r.get("compile_s")),
                      _ratio(r.get("compile_s"), r.get("ours_with_compile_s", r["ours_s"]))]
        cells.append(r["check"])
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def markdown_report(meta: dict, rows: list[dict], with_compile: bool) -> str:
    out = [f"# groupnorm_ext benchmark: {meta['machine']}", ""]
    out += [
        f"- date: {meta['date']}; git: {meta['git']}; torch {meta['torch']}; "
        f"groupnorm_ext {meta['ext_version']} (built with CUDA: {meta['built_with_cuda']})",
        f"- device: {meta['device_name']}; threads: {meta['threads']}; CPUs busy with other work "
        f"before / after the run: {_pct(meta.get('busy_start'))} / {_pct(meta.get('busy_end'))}",
        f"- CPU path: groupnorm_ext: {meta['ext_cpu_path']}; torch: {meta['torch_cpu_capability']}",
        f"- copy bandwidth: {meta['copy_gbps']:.1f} GB/s (median `dst.copy_(src)`, "
        f"{meta['copy_bytes'] >> 20} MiB fp32, read + write counted)"
        + (f"; {meta['copy_gbps_end']:.1f} GB/s probed again after the cases (% roofline uses the first)"
           if meta.get("copy_gbps_end") else ""),
        f"- timing: {meta['timing']}",
        "- ours = `groupnorm_ext.group_norm`, torch = `torch.nn.functional.group_norm` (eager), "
        "affine weight/bias in the input dtype; speed-up = torch / ours",
        "- layout `+silu` (the fused set): ours with `activation=\"silu\"` against torch's "
        "`F.silu(F.group_norm(x))` (compile: torch.compile of that composition)",
        "- fwd+bwd = forward + `torch.autograd.grad(out, (x, weight, bias), fixed grad_out)`",
        "- GB/s = bytes that must move / ours time (fwd: read x + write y; fwd+bwd: that + read x, "
        "read dy, write dx); % roofline = GB/s / copy bandwidth (over 100% means the case fits in cache)",
        "- check: ours vs torch with a loose per-dtype tolerance before timing (max error / max |ref|)",
    ]
    if meta.get("device", "cpu") == "cpu":
        out.append(f"- †: those calls took {FAULTS_MARK} or more minor page faults each on average (a freed "
                   "output that glibc gave back to the OS is faulted in and zeroed again on the next call), "
                   "so the time includes the kernel zeroing pages (counts per call: `faults_per_call` in a --save JSON)")
    out.append("")
    out += speedup_summary(rows)
    for name in SETS:
        part = [r for r in rows if r["set"] == name]
        if part:
            out += [f"## {name}", "", markdown_table(part, with_compile), ""]
    return "\n".join(out)


def speedup_summary(rows: list[dict]) -> list[str]:
    """Per pass: the lowest speed-up over torch eager, its case, and the rows under 1x."""
    out = []
    for pass_ in ("fwd", "fwd+bwd"):
        part = [r for r in rows if r["pass"] == pass_]
        if not part:
            continue
        worst = min(part, key=lambda r: r["torch_s"] / r["ours_s"])
        under = [r for r in part if r["torch_s"] < r["ours_s"]]
        line = (f"- {pass_}: lowest speed-up {worst['torch_s'] / worst['ours_s']:.2f}x ({worst['shape']} "
                f"G{worst['groups']} {worst['dtype']} {worst['layout']}); {len(under)} of {len(part)} under 1x")
        if under:
            line += ": " + ", ".join(f"{r['shape']} {r['dtype']} {r['layout']} {r['torch_s'] / r['ours_s']:.2f}x"
                                     for r in under)
        out.append(line)
    return (["## summary", ""] + out + [""]) if out else []


def compare_table(old: dict, meta: dict, rows: list[dict]) -> str:
    """Old vs new median times for the cases present in both runs (matched by case key and pass)."""
    old_rows = {(r["key"], r["pass"]): r for r in old["results"]}
    head = ["shape", "G", "dtype", "layout", "pass", "old ours ms", "new ours ms", "change",
            "old torch ms", "new torch ms"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    matched = 0
    for r in rows:
        o = old_rows.get((r["key"], r["pass"]))
        if o is None:
            continue
        matched += 1
        change = f"{100 * (r['ours_s'] / o['ours_s'] - 1):+.1f}%"
        lines.append("| " + " | ".join([
            r["shape"], str(r["groups"]), r["dtype"], r["layout"], r["pass"],
            _ms(o["ours_s"]), _ms(r["ours_s"]), change, _ms(o["torch_s"]), _ms(r["torch_s"]),
        ]) + " |")
    note = (f"Compared with {old['meta']['machine']} run of {old['meta']['date']} "
            f"(git {old['meta']['git']}): {matched} of {len(rows)} rows matched. "
            "change < 0 means ours got faster; the torch columns show how much the machine drifted.")
    if old["meta"]["machine"] != meta["machine"]:
        note += " WARNING: the old run is from a different machine."
    return note + "\n\n" + "\n".join(lines)


def save_json(path: str, meta: dict, rows: list[dict]) -> None:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "w") as f:
        json.dump({"meta": meta, "results": rows}, f, indent=1)


def load_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


def save_plot(path: str, meta: dict, rows: list[dict]) -> bool:
    """Grouped bar plot of speed-up (torch / ours) per case, fwd and fwd+bwd side by side."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: skipping the PNG plot", file=sys.stderr)
        return False
    labels, fwd, bwd = [], [], []
    for r in rows:
        if r["pass"] != "fwd":
            continue
        label = f"{r['shape']} G{r['groups']} {r['dtype']} {r['layout']}"
        other = next((o for o in rows if o["key"] == r["key"] and o["pass"] == "fwd+bwd"), None)
        labels.append(label)
        fwd.append(r["torch_s"] / r["ours_s"])
        bwd.append(other["torch_s"] / other["ours_s"] if other else 0.0)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.45 * len(labels) + 2), 5))
    xs = range(len(labels))
    width = 0.4
    ax.bar([x - width / 2 for x in xs], fwd, width, label="fwd")
    ax.bar([x + width / 2 for x in xs], bwd, width, label="fwd+bwd")
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_xticks(list(xs))
    ax.set_xticklabels(labels, rotation=75, ha="right", fontsize=7)
    ax.set_ylabel("speed-up vs torch eager (higher is better)")
    ax.set_title(f"groupnorm_ext vs F.group_norm: {meta['machine']} ({meta['git']})")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
