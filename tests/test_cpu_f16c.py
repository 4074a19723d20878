"""The float16 loops on F16C (csrc/cpu/loops_half.cpp): on an x86-64-v3 or -v4 CPU the float16 forward and
backward convert with vcvtph2ps / vcvtps2ph instead of the integer emulation of the target_clones loops. The
conversions are exact one way and round to nearest even the other, and the arithmetic in between is the
clones' float arithmetic, so every forward output must be bitwise the emulation's, NaN payloads aside (the
backward: see below): each mode runs in a child (GROUPNORM_EXT_CPU_F16C and GROUPNORM_EXT_STREAMING_STORES are read once
per process) over the same inputs.
The float16 output (and grad_input) must also be the float32 path's on the same values, rounded by torch:
the statistics and gradient sums are formed from the same floats, so only the final rounding differs. Outputs are pushed into
float16's subnormals and past its largest value to reach every branch of the rounding."""
import textwrap

import pytest
import torch

from reference import run_saving_child

CASES_SCRIPT = textwrap.dedent(
    """
    import sys, torch, groupnorm_ext
    torch.manual_seed(0)
    cases = [
        # shape, groups, layout, output scale: channels not a multiple of 8 or 16 (vector tails),
        # rows <= 64 with C >= 64 (the column-block statistics) and many rows (four-row order),
        # rows longer than a staged piece (2048 elements) for the fused activations, 3-D volumes.
        ((2, 40, 6, 7), 4, "channels_last", 1.0),
        ((3, 13, 5, 3), 1, "channels_last", 1.0),
        ((2, 96, 4, 4), 8, "channels_last", 1.0),
        ((2, 80, 17, 19), 8, "channels_last", 1.0),
        ((1, 2100, 3, 3), 21, "channels_last", 1.0),
        # the gradient sums' sixteen-row blocks over rows wider than their scratch (2048 channels):
        # 100 rows of 2304 channels, walked in two pieces of channels
        ((1, 2304, 10, 10), 36, "channels_last", 1.0),
        ((2, 24, 5, 6, 7), 4, "channels_last_3d", 1.0),
        ((2, 24, 37, 5), 4, "contiguous", 1.0),
        ((3, 6, 2500), 3, "contiguous", 1.0),
        ((2, 48, 9, 9), 8, "channels_last", 3e-6),     # outputs among float16's subnormals
        ((2, 48, 9, 9), 8, "channels_last", 3e4),      # and past 65504 (inf)
        ((2, 48, 9, 9), 8, "contiguous", 3e-6),
        ((2, 48, 9, 9), 8, "contiguous", 3e4),
        ((1, 64, 256, 256), 32, "channels_last", 1.0),  # 8 MiB: the default streams its output
        ((1, 64, 256, 256), 32, "contiguous", 1.0),
        ((2, 32, 5, 5), 8, "channels_last", float("nan")),  # an inf and a NaN in the input
        ((2, 32, 5, 5), 8, "contiguous", float("nan")),
        # the contiguous moments (staged chunk by chunk): several chunks per group, a constant
        # group, a large offset, near float16's largest values
        ((1, 4, 20000), 2, "contiguous", "several chunks"),
        ((2, 6, 300), 3, "contiguous", "constant"),
        ((2, 6, 300), 3, "contiguous", "offset"),
        ((2, 6, 300), 3, "contiguous", "near max"),
    ]
    fmt = {"channels_last": torch.channels_last, "channels_last_3d": torch.channels_last_3d}
    results = []
    for shape, groups, layout, scale in cases:
        x = torch.randn(shape, dtype=torch.float64) * 2 + 0.5
        case_scale = scale
        if scale == "constant":
            x[:, : shape[1] // 2] = 3.25
        elif scale == "offset":
            x = x + 1000
        elif scale == "near max":
            x = x.clamp(-3, 3) * 2e4
        x = x.to(torch.float16)
        if isinstance(scale, str):
            scale = 1.0
        elif scale != scale:
            x[(0,) * x.dim()], x[(-1,) * x.dim()], scale = float("inf"), float("nan"), 1.0
        if layout in fmt:
            x = x.contiguous(memory_format=fmt[layout])
        w = (torch.randn(shape[1], dtype=torch.float64) * scale).to(torch.float16)
        b = (torch.randn(shape[1], dtype=torch.float64) * scale).to(torch.float16)
        for act in ("identity", "silu", "gelu"):
            y, mean, rstd = torch.ops.groupnorm_ext.group_norm_forward(x, groups, w, b, 1e-5, act)
            y32, mean32, rstd32 = torch.ops.groupnorm_ext.group_norm_forward(x.float(), groups, w.float(), b.float(),
                                                                           1e-5, act)
            dy = (torch.randn(shape, dtype=torch.float64) * scale).to(torch.float16).contiguous(
                memory_format=fmt.get(layout, torch.contiguous_format))
            gx, gw, gb = torch.ops.groupnorm_ext.group_norm_backward(dy, x, mean, rstd, w, b, groups, act,
                                                                     [True, True, True])
            gx32, _, _ = torch.ops.groupnorm_ext.group_norm_backward(dy.float(), x.float(), mean32, rstd32, w.float(),
                                                                     b.float(), groups, act, [True, False, False])
            results.append(dict(case=(shape, groups, layout, case_scale, act), y=y, mean=mean, rstd=rstd, gx=gx, gw=gw,
                                gb=gb, y32=y32.to(torch.float16), mean32=mean32, rstd32=rstd32,
                                gx32=gx32.to(torch.float16), layout_kept=y.stride() == x.stride() == gx.stride()))
    torch.save(dict(isa=groupnorm_ext.cpu_capability(), results=results), sys.argv[1])
    """
)

MODES = {
    "emulated": dict(GROUPNORM_EXT_CPU_F16C="off", GROUPNORM_EXT_STREAMING_STORES="0"),
    "emulated_streamed": dict(GROUPNORM_EXT_CPU_F16C="off", GROUPNORM_EXT_STREAMING_STORES="1"),
    "v3_streamed": dict(GROUPNORM_EXT_CPU_F16C="v3", GROUPNORM_EXT_STREAMING_STORES="1"),
    "v3": dict(GROUPNORM_EXT_CPU_F16C="v3", GROUPNORM_EXT_STREAMING_STORES="0"),
    "default": dict(GROUPNORM_EXT_CPU_F16C=None, GROUPNORM_EXT_STREAMING_STORES=None),
    "default_streamed": dict(GROUPNORM_EXT_CPU_F16C=None, GROUPNORM_EXT_STREAMING_STORES="1"),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    d = tmp_path_factory.mktemp("f16c")
    return {name: run_saving_child(CASES_SCRIPT, d / f"{name}.pt", **env) for name, env in MODES.items()}


def same_bits(a, b):
    """Bitwise equal, NaN for NaN: vcvtps2ph keeps a NaN's payload where c10's software conversion
    returns the default NaN, so only where the NaNs are is compared for them."""
    if a.shape != b.shape or a.stride() != b.stride() or not torch.equal(a.isnan(), b.isnan()):
        return False
    keep = ~a.isnan()
    return torch.equal(a[keep].contiguous().view(-1).view(torch.uint8), b[keep].contiguous().view(-1).view(torch.uint8))


def test_the_modes_ran_the_paths_they_name(runs):
    assert "float16 emulated" in runs["emulated"]["isa"], runs["emulated"]["isa"]
    default = runs["default"]["isa"]
    if "x86-64-v3" not in default and "x86-64-v4" not in default:
        pytest.skip(f"this CPU has no x86-64-v3 level: {default}")
    assert "float16 F16C" in default, default
    assert "float16 F16C (x86-64-v3 copy)" in runs["v3"]["isa"], runs["v3"]["isa"]


@pytest.mark.parametrize("mode", [m for m in MODES if m != "emulated"])
def test_the_forward_gives_the_emulations_bits_in_every_mode(runs, mode):
    base, other = runs["emulated"]["results"], runs[mode]["results"]
    assert len(base) == len(other) == 21 * 3
    for e, o in zip(base, other):
        for key in ("y", "mean", "rstd"):
            assert same_bits(e[key], o[key]), f"{key} differs in {mode} for {e['case']}"


@pytest.mark.parametrize("mode", ["v3_streamed", "default", "default_streamed"])
def test_the_f16c_copies_give_the_same_backward(runs, mode):
    for a, o in zip(runs["v3"]["results"], runs[mode]["results"]):
        for key in ("gx", "gw", "gb"):
            assert same_bits(a[key], o[key]), f"{key} differs between v3 and {mode} for {a['case']}"


# The backward's gradient sums may differ from the emulation's in their last bits: GCC contracts the
# emulating clones' scalar tails (channels past the last whole vector) into fused multiply-adds in
# another order than their vector bodies, while the F16C loops contract as the float32 loops do (the
# test below). grad_input then differs by at most one float16 rounding step, rarely.
@pytest.mark.parametrize("mode", ["v3", "default"])
def test_the_backward_is_close_to_the_emulation(runs, mode):
    for e, o in zip(runs["emulated"]["results"], runs[mode]["results"]):
        for key in ("gx", "gw", "gb"):
            a, b = e[key].double(), o[key].double()
            assert torch.equal(torch.isfinite(a), torch.isfinite(b)) and torch.equal(a.isnan(), b.isnan()), \
                (key, e["case"])
            finite = torch.isfinite(a)
            step = torch.maximum(a.abs(), b.abs())[finite] * 2.0**-10 + 2.0**-24  # one float16 ulp
            assert ((a - b).abs()[finite] <= step).all(), f"{key} off by more than a float16 ulp for {e['case']}"


@pytest.mark.parametrize("mode", ["emulated", "default"])
def test_float16_is_the_float32_path_rounded(runs, mode):
    for r in runs[mode]["results"]:
        assert r["layout_kept"], r["case"]
        assert same_bits(r["mean"], r["mean32"]) and same_bits(r["rstd"], r["rstd32"]), r["case"]
        assert same_bits(r["y"], r["y32"]), f"y differs from float32's rounded for {r['case']}"
        # The channels-last gradient sums and grad_input of the F16C loops are the float32 loops' on the
        # same values (the contiguous sums of 16-bit data have loops of their own); with an activation,
        # dz is rounded to float16 in between.
        if mode == "default" and "F16C" in runs[mode]["isa"] and r["case"][2] != "contiguous" \
                and r["case"][4] == "identity":
            assert same_bits(r["gx"], r["gx32"]), f"grad_input differs from float32's rounded for {r['case']}"
    nonfinite = [r["y"] for r in runs[mode]["results"] if isinstance(r["case"][3], float) and r["case"][3] != r["case"][3]]
    assert nonfinite and all(y.isnan().any() and not y.isnan().all() for y in nonfinite)
    scales = {r["case"][3]: r["y"] for r in runs[mode]["results"] if r["case"][4] == "identity"}
    tiny, huge = scales[3e-6], scales[3e4]
    assert ((tiny != 0) & (tiny.abs() < 6.1e-5)).any(), "no subnormal output: the case lost its point"
    assert torch.isinf(huge).any() and torch.isfinite(huge).any(), "no overflow to inf: the case lost its point"
