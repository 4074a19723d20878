"""A few large forward/backward calls for Nsight Compute (bench/gpu_check.sh runs it under `ncu` when
PROFILE=1): each case runs twice so ncu can skip the first (cold) call. Prints nothing of interest
itself; the kernel table comes from ncu's CSV."""
import sys

CASES = {  # name: (shape, G, memory format, dtype)
    "cl3d_bf16": ((2, 64, 128, 128, 128), 4, "channels_last_3d", "bfloat16"),
    "ncs_fp32": ((2, 64, 128, 128, 128), 4, "contiguous_format", "float32"),
    "fused_fp32": ((16, 320, 64, 64), 32, "contiguous_format", "float32"),
    "n1g32_fp32": ((1, 128, 512, 512), 32, "contiguous_format", "float32"),
    "cl_bf16": ((8, 320, 64, 64), 32, "channels_last", "bfloat16"),
}


def main(names):
    import torch

    import groupnorm_ext
    for name in names or CASES:
        shape, G, fmt, dtype = CASES[name]
        fmt, dtype = getattr(torch, fmt), getattr(torch, dtype)
        x = torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=fmt).requires_grad_(True)
        w = torch.randn(shape[1], device="cuda", dtype=dtype, requires_grad=True)
        b = torch.randn(shape[1], device="cuda", dtype=dtype, requires_grad=True)
        gy = torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=fmt)
        for _ in range(2):
            torch.cuda.nvtx.range_push(name)
            y = groupnorm_ext.group_norm(x, G, w, b)
            torch.autograd.grad(y, (x, w, b), gy)
            torch.cuda.nvtx.range_pop()
        torch.cuda.synchronize()
        print(name, "ok", flush=True)


METRICS = ["gpu__time_duration.sum", "dram__bytes_read.sum", "dram__bytes_write.sum",
           "dram__throughput.avg.pct_of_peak_sustained_elapsed", "sm__throughput.avg.pct_of_peak_sustained_elapsed",
           "l1tex__throughput.avg.pct_of_peak_sustained_active", "sm__warps_active.avg.pct_of_peak_sustained_active",
           "launch__registers_per_thread", "launch__grid_size", "launch__block_size", "launch__cluster_dim_x",
           "smsp__average_warps_issue_stalled_long_scoreboard_per_issue_active.ratio",
           "smsp__average_warps_issue_stalled_barrier_per_issue_active.ratio",
           "smsp__average_warps_issue_stalled_lg_throttle_per_issue_active.ratio"]


def summarize(path):
    """ncu --csv --page raw output -> one Markdown row per kernel launch (NVTX range, short name)."""
    import csv
    with open(path) as f:
        rows = [r for r in csv.reader(f) if r]
    start = next(i for i, r in enumerate(rows) if "Kernel Name" in r)
    head, data = rows[start], rows[start + 2:]  # the row after the header holds units
    col = {name: head.index(name) for name in head}
    short = ["time_us", "rd_MB", "wr_MB", "dram%", "sm%", "l1%", "occ%", "regs", "grid", "block", "clu",
             "st_lsb", "st_bar", "st_lgt"]
    print("| range | kernel | " + " | ".join(short) + " |")
    print("|" + "---|" * (len(short) + 2))
    for r in data:
        name = r[col["Kernel Name"]].split("(")[0].split("<")[0].split("::")[-1]
        # NVTX push/pop column: '<pid>  "<default domain>:<range>:none:..."'
        nvtx = next((r[i] for n, i in col.items() if n.lower().startswith("thread domain:push/pop")), "")
        rng = nvtx.split(":")[1] if nvtx.count(":") >= 2 else ""
        vals = []
        for m in METRICS:
            v = r[col[m]] if m in col else ""
            try:
                f = float(v.replace(",", ""))
                if m == "gpu__time_duration.sum":
                    f /= 1e3  # ns -> us
                if m.startswith("dram__bytes"):
                    f /= 1e6
                v = "%.4g" % f
            except ValueError:
                pass
            vals.append(v)
        print("| %s | %s | %s |" % (rng[:30], name, " | ".join(vals)))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--metrics"]:
        print(",".join(METRICS))
    elif sys.argv[1:2] == ["--summarize"]:
        summarize(sys.argv[2])
    else:
        main(sys.argv[1:])
