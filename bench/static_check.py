"""Static check of the CUDA kernels, no GPU needed: per kernel and architecture, the
registers, stack frame, local memory and shared memory the compiler gave it
(`cuobjdump -res-usage` on the built objects), plus its widest global load (LDG width in
the SASS). Spills land in local memory, so LOCAL/STACK > 0 flags them.

    python bench/static_check.py [--arch sm_90]

Hot kernels must show LOCAL 0 / STACK 0; vectorized paths should show 128-bit loads
(LDG.E.128). Exits 1 when a kernel uses local memory or a stack frame.
"""
import argparse
import glob
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tool(name):
    import triton  # ships cuobjdump / nvdisasm for NVIDIA

    path = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", name)
    if not os.path.exists(path):
        sys.exit(f"{name} not found at {path}")
    return path


def demangle(names):
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout
    return out.splitlines()


def short(name):
    name = re.sub(r"groupnorm_ext::\(anonymous namespace\)::", "", name)
    name = re.sub(r"\(.*", "", name)  # drop the parameter list
    return name.replace("c10::", "")


def objects():
    objs = sorted(glob.glob(os.path.join(ROOT, "build", "temp-*cuda", "**", "cuda", "*.o"), recursive=True))
    if not objs:
        sys.exit("no CUDA objects under build/temp-*cuda: build the extension with a CUDA torch first")
    return objs


def res_usage(obj):
    text = subprocess.run([tool("cuobjdump"), "-res-usage", obj], capture_output=True, text=True).stdout
    rows, arch = [], None
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"arch = (sm_\d+)", line.strip())
        if m:
            arch = m.group(1)
        m = re.match(r"\s*Function (\S+):", line)
        if m and i + 1 < len(lines):
            usage = dict(re.findall(r"(\w+)(?:\[\d+\])?:(\d+)", lines[i + 1]))
            rows.append((arch, m.group(1), usage))
    return rows


def load_widths(obj):
    sass = subprocess.run([tool("cuobjdump"), "-sass", obj], capture_output=True, text=True).stdout
    widths, arch, func = {}, None, None
    for line in sass.splitlines():
        m = re.search(r"arch = (sm_\d+)", line)
        if m:
            arch = m.group(1)
        m = re.match(r"\s*Function : (\S+)", line)
        if m:
            func = m.group(1)
        m = re.search(r"LDG\.E(\.(?:64|128|U16|U8|S16))?", line)
        if m and func:
            bits = {None: 32, ".64": 64, ".128": 128, ".U16": 16, ".S16": 16, ".U8": 8}.get(m.group(1), 32)
            key = (arch, func)
            widths[key] = max(widths.get(key, 0), bits)
    return widths


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", help="only this architecture, e.g. sm_90")
    args = ap.parse_args()
    bad = 0
    print("| file | arch | kernel | regs | stack | local | shared | widest load |")
    print("|---|---|---|---|---|---|---|---|")
    for obj in objects():
        rows = res_usage(obj)
        widths = load_widths(obj)
        names = demangle([r[1] for r in rows])
        for (arch, mangled, usage), name in zip(rows, names):
            if args.arch and arch != args.arch:
                continue
            local, stack = int(usage.get("LOCAL", 0)), int(usage.get("STACK", 0))
            bad += local > 0 or stack > 0
            width = widths.get((arch, mangled), 0)
            print(f"| {os.path.basename(obj)} | {arch} | {short(name)} | {usage.get('REG')} | {stack} | {local} | "
                  f"{usage.get('SHARED')} | {f'LDG {width}-bit' if width else '-'} |")
    if bad:
        print(f"\n{bad} kernel(s) use a stack frame or local memory (spills?)")
        return 1
    print("\nno kernel uses local memory or a stack frame")
    return 0


if __name__ == "__main__":
    sys.exit(main())
