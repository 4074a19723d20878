"""Streaming stores (csrc/cpu/simd.h, write_streamed): large CPU outputs are computed into an L1 buffer
and written with non-temporal stores. Only the stores differ, so every output must be bitwise the one
the plain path writes. GROUPNORM_EXT_STREAMING_STORES is read once per process, so each mode runs in a
child process over the same inputs: =1 streams every output (any size, so the small cases below reach the
aligned head, the 4 KiB pieces, the tails and rows split across pieces), =0 never does."""
import textwrap

import pytest
import torch

from reference import forward_tol, ref_grads, ref_group_norm, run_saving_child, tol

CASES_SCRIPT = textwrap.dedent(
    """
    import sys, torch, groupnorm_ext
    torch.manual_seed(0)
    cases = [
        # shape, groups, dtype, layout: odd spatial sizes put rows at every 4-byte offset (the head
        # up to the first 16-byte boundary); 1300 channels of float32 rows span 4 KiB pieces.
        ((2, 8, 37, 5), 4, torch.float32, "contiguous"),
        ((2, 8, 37, 5), 4, torch.float32, "channels_last"),
        ((1, 1300, 3, 3), 13, torch.float32, "channels_last"),
        ((3, 6, 1025), 3, torch.float32, "contiguous"),
        ((2, 12, 9, 11, 7), 4, torch.bfloat16, "contiguous"),
        ((2, 12, 9, 11, 7), 4, torch.bfloat16, "channels_last_3d"),
        ((2, 10, 33, 31), 5, torch.float16, "channels_last"),
        ((2, 6, 17, 19), 3, torch.float64, "contiguous"),
        ((2, 6, 17, 19), 3, torch.float64, "channels_last"),
        ((1, 64, 128, 128), 32, torch.float32, "contiguous"),   # 4 MiB: also the pooled buffers
        ((1, 64, 128, 128), 32, torch.bfloat16, "channels_last"),
        ((4, 3, 5), 1, torch.float32, "contiguous"),            # shorter than one 16-byte store
        ((1, 1280, 8, 8), 32, torch.float32, "channels_last"),  # channels-last strips (N = 1), rows
        ((3, 1280, 8, 8), 32, torch.bfloat16, "channels_last"), # streamed a strip's width at a time
        # float32 channels-last grad_input rows of whole lines stream from registers (loops_backward.cpp,
        # grad_input_rows_stream_lines): whole rows per sample, and 40 channels (not whole lines) beside.
        ((2, 64, 16, 16), 8, torch.float32, "channels_last"),
        ((2, 40, 6, 7), 8, torch.float32, "channels_last"),
    ]
    fmt = {"channels_last": torch.channels_last, "channels_last_3d": torch.channels_last_3d}
    activations = ["silu", "relu", "gelu", "gelu_tanh"]
    results = []
    for i, (shape, groups, dtype, layout) in enumerate(cases):
        x = (torch.randn(shape, dtype=torch.float64) * 2 + 0.5).to(dtype)
        if layout in fmt:
            x = x.contiguous(memory_format=fmt[layout])
        w = torch.randn(shape[1], dtype=torch.float64).to(dtype)
        b = torch.randn(shape[1], dtype=torch.float64).to(dtype)
        gy = torch.randn(shape, dtype=torch.float64).to(dtype)
        xr, wr, br = (t.clone().requires_grad_(True) for t in (x, w, b))
        y = groupnorm_ext.group_norm(xr, groups, wr, br)
        gx, gw, gb = torch.autograd.grad(y, (xr, wr, br), gy)
        # A misaligned input view: the apply reads x at an odd element offset.
        base = torch.randn(x.numel() + 1, dtype=torch.float64).to(dtype)
        xv = base[1:].view(shape)
        yv = groupnorm_ext.group_norm(xv, groups, w, b)
        # A fused activation (its normalize loops stage four lines per round of stores), and the
        # backward's dL/dz pass.
        act = activations[i % len(activations)]
        ya = groupnorm_ext.group_norm(xr, groups, wr, br, 1e-5, act)
        gxa, = torch.autograd.grad(ya, xr, gy)
        results.append(dict(shape=shape, groups=groups, x=x, w=w, b=b, gy=gy, xv=xv,
                            y=y.detach(), gx=gx, gw=gw, gb=gb, yv=yv, ya=ya.detach(), gxa=gxa))
    torch.save(results, sys.argv[1])
    """
)


def run_cases(mode, path):
    return run_saving_child(CASES_SCRIPT, path, GROUPNORM_EXT_STREAMING_STORES=mode)


@pytest.fixture(scope="module")
def both_modes(tmp_path_factory):
    d = tmp_path_factory.mktemp("streaming")
    return run_cases("1", d / "stream.pt"), run_cases("0", d / "plain.pt")


def assert_cases_bitwise_equal(first, second):
    """Two children's CASES_SCRIPT results: the same inputs, and every output bitwise equal."""
    assert len(first) == len(second)
    for s, p in zip(first, second):
        assert torch.equal(s["x"], p["x"]), "the two processes drew different inputs"
        for key in ("y", "gx", "gw", "gb", "yv", "ya", "gxa"):
            assert torch.equal(s[key], p[key]), f"{key} differs for {s['shape']} {s['x'].dtype}"
            assert s[key].stride() == p[key].stride()


def test_streamed_outputs_are_bitwise_the_plain_ones(both_modes):
    assert_cases_bitwise_equal(*both_modes)


def test_streamed_outputs_match_the_reference(both_modes):
    streamed, _ = both_modes
    for case in streamed:
        x, G, w, b, dtype = case["x"], case["groups"], case["w"], case["b"], case["x"].dtype
        for inp, out in ((x, case["y"]), (case["xv"], case["yv"])):
            torch.testing.assert_close(out.double(), ref_group_norm(inp, G, w, b)[0],
                                       **forward_tol(dtype, inp, G, w))
        for name, got, want in zip(("grad_input", "grad_weight", "grad_bias"), (case["gx"], case["gw"], case["gb"]),
                                   ref_grads(x, G, w, b, case["gy"])):
            torch.testing.assert_close(got.double(), want, msg=lambda m: f"{name} {case['shape']} {dtype}: {m}",
                                       **tol(dtype, grad=True))
