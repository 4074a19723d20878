"""Saves the example's model and input for run_model (examples/cpp/run_model.cpp).

    python examples/cpp/make_model.py OUT_DIR

writes OUT_DIR/model.pt (torch.jit.save of a scripted ConvNormNet), OUT_DIR/input.pt and
OUT_DIR/expected.pt (torch.save: the input, and the model's output computed here in Python).
"""
import argparse
import os

import torch

import groupnorm_ext


class ConvNormNet(torch.nn.Module):
    """conv -> group_norm (the raw op) -> relu -> conv -> GroupNorm (the module)."""

    def __init__(self, in_channels: int = 3, channels: int = 16, groups: int = 4):
        super().__init__()
        self.groups = groups
        self.conv1 = torch.nn.Conv2d(in_channels, channels, 3, padding=1)
        self.weight1 = torch.nn.Parameter(torch.linspace(0.5, 1.5, channels))
        self.bias1 = torch.nn.Parameter(torch.linspace(-0.25, 0.25, channels))
        self.conv2 = torch.nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2 = groupnorm_ext.GroupNorm(groups, channels)
        with torch.no_grad():  # as if trained: not the identity affine of a fresh GroupNorm
            self.norm2.weight.uniform_(0.5, 1.5)
            self.norm2.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = self.conv1(x)
        x = torch.ops.groupnorm_ext.group_norm(x, self.groups, self.weight1, self.bias1, 1e-5, "identity")
        x = torch.relu(x)
        return self.norm2(self.conv2(x))


def save_example(out_dir: str, seed: int = 0):
    """Writes model.pt, input.pt and expected.pt under out_dir; returns (model, input, expected)."""
    os.makedirs(out_dir, exist_ok=True)
    torch.manual_seed(seed)
    model = torch.jit.script(ConvNormNet().eval())
    x = torch.randn(2, 3, 8, 8)
    with torch.inference_mode():
        expected = model(x)
    torch.jit.save(model, os.path.join(out_dir, "model.pt"))
    torch.save(x, os.path.join(out_dir, "input.pt"))
    torch.save(expected, os.path.join(out_dir, "expected.pt"))
    return model, x, expected


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir")
    _, _, expected = save_example(parser.parse_args().out_dir)
    print(f"output sum {expected.sum().item():.9g}, mean {expected.mean().item():.9g}, "
          f"std {expected.std().item():.9g}")
    print("output[0, 0, 0, :] " + " ".join(f"{v:.4f}" for v in expected[0, 0, 0].tolist()))
