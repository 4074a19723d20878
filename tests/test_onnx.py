"""ONNX export of models that use ours: both exporters (torch.export-based and TorchScript-based)
turn group_norm into torch's own (GroupNormalization or its decomposition), so the exported graph
holds standard ONNX ops and computes what the eager model computes (checked with onnx's reference
evaluator, no runtime needed)."""
import io

import pytest
import torch

import groupnorm_ext
from reference import make_input

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")  # the torch.export-based exporter's translator
from onnx.reference import ReferenceEvaluator  # noqa: E402


class Block(torch.nn.Module):
    """A diffusion-UNet block: conv, GroupNorm, SiLU, a GroupNorm without bias, one through the functional
    API and one with the activation fused."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 16, 3, padding=1)
        self.norm = groupnorm_ext.GroupNorm(4, 16)
        self.norm2 = groupnorm_ext.GroupNorm(8, 16, eps=1e-3, bias=False)
        self.act = torch.nn.SiLU()
        self.norm_silu = groupnorm_ext.GroupNorm(4, 16, activation="silu")  # exports as GroupNorm + SiLU

    def forward(self, x):
        h = self.act(self.norm(self.conv(x)))
        return self.norm2(h) + groupnorm_ext.group_norm(h, 2) + self.norm_silu(h)


def _export(model, x, dynamo):
    f = io.BytesIO()
    torch.onnx.export(model, (x,), f, dynamo=dynamo, input_names=["x"])
    return onnx.load_from_string(f.getvalue())


@pytest.mark.parametrize("dynamo", [True, False], ids=["torch_export", "torchscript"])
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_exported_model_matches_eager(dynamo, layout):
    torch.manual_seed(0)
    model = Block().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-1, 1)
    x = make_input((2, 3, 8, 8), layout=layout, seed=3)
    proto = _export(model, x, dynamo)
    op_types = {n.op_type for n in proto.graph.node} | {n.op_type for f in proto.functions for n in f.node}
    assert not any("groupnorm_ext" in n.domain for n in proto.graph.node), "our op leaked into the graph"
    assert op_types & {"GroupNormalization", "InstanceNormalization", "ReduceMean"}, op_types
    with torch.no_grad():
        expected = model(x)
    (got,) = ReferenceEvaluator(proto).run(None, {"x": x.contiguous().numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected.contiguous(), rtol=1e-4, atol=1e-4)


def test_eager_calls_outside_export_still_run_ours():
    # the export check sits on the tracing paths only; an eager call right after an export runs our op
    model = Block().eval()
    x = make_input((2, 3, 8, 8), seed=4)
    _export(model, x, dynamo=False)
    assert not torch.onnx.is_in_onnx_export()
    with torch.no_grad():
        out = groupnorm_ext.group_norm(x, 3, None, None, 1e-5)
    torch.testing.assert_close(out, torch.nn.functional.group_norm(x, 3), rtol=1e-5, atol=1e-5)
