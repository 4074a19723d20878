"""The contiguous CPU moments and gradient sums in 8-lane halves (csrc/cpu/simd.h, vf8x2 / vd4x2): the
clones without AVX-512 use them, because GCC keeps 512-bit generic vectors in memory there; lane for lane
they make the same operations as the wide vectors of the AVX-512 clone, so every output (forward and
backward) must be bitwise the same.
GROUPNORM_EXT_CPU_LANES=narrow forces the halves on this machine; it is read once per process, so each
mode runs in a child over the same inputs. The cases reach every branch of the moments: the 32-element
loop and the tail, constant chunks, huge values (the double passes), a tiny spread, Inf / NaN,
float32, bfloat16 and float16, several chunks per group and more than one group per sample."""
import textwrap

import pytest
import torch

from reference import forward_tol, ref_group_norm, run_saving_child

CASES_SCRIPT = textwrap.dedent(
    """
    import sys, torch, groupnorm_ext
    torch.manual_seed(0)
    def draw(shape, kind):
        x = torch.randn(shape, dtype=torch.float64) * 2 + 0.5
        if kind == "constant":
            x[:, : shape[1] // 2] = 3.25
        elif kind == "huge":
            x = x * 1e18
        elif kind == "tiny_spread":
            x = 1.0 + x * 1e-14
        elif kind == "offset":
            x = x + 1e4
        elif kind == "nonfinite":
            x[0, 0, 0] = float("inf")
            x[-1, -1, -1] = float("nan")
        return x
    cases = [
        ((2, 8, 37, 5), 4, "normal"),        # 185-element rows: the 32-loop and a tail
        ((3, 6, 1025), 3, "offset"),
        ((2, 4, 31), 2, "normal"),           # shorter than one 32-element step
        ((1, 2, 70000), 1, "normal"),        # several chunks per group
        ((2, 6, 64), 3, "constant"),
        ((2, 6, 300), 3, "huge"),
        ((2, 6, 300), 3, "tiny_spread"),
        ((2, 6, 300), 3, "nonfinite"),
    ]
    results = []
    for shape, groups, kind in cases:
        for dtype in (torch.float32, torch.bfloat16, torch.float16):
            if kind == "huge" and dtype == torch.float16:
                continue  # 1e18 is past float16's range: not a float-lane case
            x = draw(shape, kind).to(dtype)
            w = torch.randn(shape[1], dtype=torch.float64).to(dtype)
            b = torch.randn(shape[1], dtype=torch.float64).to(dtype)
            y, mean, rstd = torch.ops.groupnorm_ext.group_norm_forward(x, groups, w, b, 1e-5, "identity")
            dy = torch.randn(shape, dtype=torch.float64).to(dtype)
            if kind == "huge":
                dy = dy * 1e20  # products past float's range: the double re-sum
            gx, gw, gb = torch.ops.groupnorm_ext.group_norm_backward(dy, x, mean, rstd, w, b, groups, "identity",
                                                                     [True, True, True])
            results.append(dict(shape=shape, groups=groups, kind=kind, x=x, w=w, b=b, y=y, mean=mean, rstd=rstd,
                                gx=gx, gw=gw, gb=gb))
    torch.save(dict(isa=groupnorm_ext.cpu_capability(), results=results), sys.argv[1])
    """
)


def run_cases(lanes, path):
    return run_saving_child(CASES_SCRIPT, path, GROUPNORM_EXT_CPU_LANES=lanes)


@pytest.fixture(scope="module")
def both_lanes(tmp_path_factory):
    d = tmp_path_factory.mktemp("lanes")
    return run_cases("narrow", d / "narrow.pt"), run_cases(None, d / "default.pt")


def test_narrow_lanes_are_in_use(both_lanes):
    narrow, default = both_lanes
    if "avx512" not in default["isa"]:
        pytest.skip(f"this CPU runs the {default['isa']} clone, which uses the 8-lane halves already")
    assert "8-lane" in narrow["isa"] and "8-lane" not in default["isa"], (narrow["isa"], default["isa"])


def same_bits(a, b):
    return a.shape == b.shape and torch.equal(a.contiguous().view(-1).view(torch.uint8),
                                              b.contiguous().view(-1).view(torch.uint8))


def test_narrow_lanes_give_the_wide_lanes_bits(both_lanes):
    narrow, default = both_lanes
    assert len(narrow["results"]) == len(default["results"]) > 0
    for n, d in zip(narrow["results"], default["results"]):
        assert same_bits(n["x"], d["x"]), "the two processes drew different inputs"
        for key in ("y", "mean", "rstd", "gx", "gw", "gb"):
            assert same_bits(n[key], d[key]), f"{key} differs for {n['shape']} {n['x'].dtype} {n['kind']}"


@pytest.mark.parametrize("index", range(4))
def test_narrow_lanes_match_the_reference(both_lanes, index):
    r = both_lanes[0]["results"][index]   # finite cases: compared with the float64 reference
    x, w, b = r["x"], r["w"], r["b"]
    expected, mean, _ = ref_group_norm(x, r["groups"], w, b, 1e-5)
    torch.testing.assert_close(r["y"].double(), expected, **forward_tol(x.dtype, x, r["groups"], w))
    torch.testing.assert_close(r["mean"].double().view(-1), mean.reshape(-1), rtol=1e-6, atol=1e-6)


# Every finite float16 / bfloat16 value, each filling one row of 40 (the 32-element loop and a tail):
# a constant chunk's mean is its value itself, so the saved means show the loops' 16-bit-to-float
# conversions (simd.h) value by value, subnormals and -0 included, in both lane widths.
EVERY_VALUE_SCRIPT = textwrap.dedent(
    """
    import sys, torch, groupnorm_ext
    out = {}
    for dtype in (torch.float16, torch.bfloat16):
        values = torch.arange(65536, dtype=torch.int32).to(torch.int16).view(dtype)
        values = values[torch.isfinite(values)]
        x = values.view(-1, 1, 1).expand(-1, 1, 40).contiguous()
        _, mean, _ = torch.ops.groupnorm_ext.group_norm_forward(x, 1, None, None, 1e-5, "identity")
        out[str(dtype)] = (values, mean)
    torch.save(out, sys.argv[1])
    """
)


@pytest.mark.parametrize("lanes", ["narrow", None], ids=["narrow", "default"])
def test_every_16_bit_value_converts_exactly(tmp_path, lanes):
    saved = run_saving_child(EVERY_VALUE_SCRIPT, tmp_path / "values.pt", GROUPNORM_EXT_CPU_LANES=lanes)
    for name, (values, mean) in saved.items():
        assert values.numel() > 60000, name
        assert same_bits(mean.view(-1), values.float()), f"{name}: a converted value differs from torch's"
