"""Benchmark cases: which (shape, groups, dtype, layout) the harness times, per device.

Sets, in the order they run:
  small   call overhead: a few thousand elements, the time is dispatch + launch.
  medium  diffusion-UNet-like 2-D activations, G=32, contiguous and channels_last.
  large   3-D volumes (N=2, G=8) and N=1 tensors with a huge spatial size and few groups, where one
          (n, group) slab must be split across threads / blocks to use the machine.
  seed    the shape that motivated the extension, (32, 64, 128, 128, 128) G=4, scaled down in N (CUDA) or
          in N and spatial size (CPU) so that x, y, dy, dx and the autograd buffers fit in memory.
  fused   GroupNorm + SiLU (diffusion UNets): ours with activation="silu" against torch's
          F.silu(F.group_norm(x)) (and torch.compile of that composition).

And, on its own (bench.py --sweep), the set the ">= 1x everywhere" claim is checked on:
  sweep   the diffusion-UNet grid, N = 1..16, C = 128..1280, 8..128 px, G = 32, float32, contiguous and
          channels_last, up to SWEEP_MAX_ELEMS elements a tensor (memory and time).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": torch.float64}

# Short names used in tables; "cl" is only valid for 4-D inputs and "cl3d" only for 5-D ones.
LAYOUTS = {
    "contig": torch.contiguous_format,
    "cl": torch.channels_last,
    "cl3d": torch.channels_last_3d,
}

SEED_SHAPE = (32, 64, 128, 128, 128)
SEED_GROUPS = 4
# Tensors of the seed shape alive at once in a forward+backward step: x, y, dy, dx, plus autograd
# buffers and the correctness-guard reference outputs; sizing the CUDA seed case against this count
# keeps it clear of out-of-memory errors.
SEED_LIVE_TENSORS = 8


@dataclass(frozen=True)
class Case:
    set: str
    shape: tuple[int, ...]
    groups: int
    dtype: str
    layout: str
    activation: str = "identity"  # fused after the normalization (groupnorm_ext's activation names)

    @property
    def key(self) -> str:
        """Stable identity of a case across runs (used by --compare)."""
        act = "" if self.activation == "identity" else f"|{self.activation}"
        return f"{self.shape_str}|G{self.groups}|{self.dtype}|{self.layout}{act}"

    @property
    def layout_str(self) -> str:
        """The layout column of the tables: 'cl', or 'cl+silu' with a fused activation."""
        return self.layout if self.activation == "identity" else f"{self.layout}+{self.activation}"

    @property
    def label(self) -> str:
        """What progress lines print and --filter matches, e.g. 'large 2x32x64x64x64 G8 bf16 cl3d'."""
        return f"{self.set} {self.shape_str} G{self.groups} {self.dtype} {self.layout_str}"

    @property
    def shape_str(self) -> str:
        return "x".join(str(d) for d in self.shape)

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * DTYPES[self.dtype].itemsize

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def memory_format(self) -> torch.memory_format:
        return LAYOUTS[self.layout]


def _cases(set_name, shapes, groups, dtypes, layouts, activation="identity"):
    """Cartesian product, dropping layouts that do not exist for the rank (cl needs 4-D, cl3d 5-D)."""
    out = []
    for shape in shapes:
        for dtype in dtypes:
            for layout in layouts:
                if layout == "cl" and len(shape) != 4:
                    continue
                if layout == "cl3d" and len(shape) != 5:
                    continue
                out.append(Case(set_name, tuple(shape), groups, dtype, layout, activation))
    return out


def quick_cases() -> list[Case]:
    """3-4 small/medium cases: a smoke run that finishes in well under a minute on 2 CPU cores."""
    return [
        Case("small", (2, 32, 8, 8), 8, "fp32", "contig"),
        Case("medium", (1, 128, 64, 64), 32, "fp32", "contig"),
        Case("medium", (2, 320, 32, 32), 32, "fp32", "cl"),
        Case("medium", (2, 640, 16, 16), 32, "bf16", "contig"),
    ]


def small_cases() -> list[Case]:
    return (
        _cases("small", [(2, 32, 8, 8)], 8, ["fp32"], ["contig", "cl"])
        + _cases("small", [(1, 64, 4, 4)], 32, ["fp32"], ["contig"])
        + _cases("small", [(2, 32, 16)], 8, ["fp32"], ["contig"])
        # G = C (a group per channel, as InstanceNorm): many slabs of one small channel each
        + _cases("small", [(8, 64, 8, 8)], 64, ["fp32"], ["contig", "cl"])
    )


def medium_cases(device: str) -> list[Case]:
    # Stable-Diffusion-style UNet blocks at 512 px (latent 64x64) and their down-sampled levels, down
    # to the 1280-channel 16x16 and 8x8 ones (short rows of many channels: little work per call).
    shapes = [(1, 128, 64, 64), (2, 320, 64, 64), (2, 640, 32, 32), (4, 640, 16, 16), (4, 256, 32, 32),
              (2, 1280, 16, 16), (4, 1280, 8, 8)]
    dtypes = ["fp32"] if device == "cpu" else ["fp32", "fp16"]
    cases = _cases("medium", shapes, 32, dtypes, ["contig", "cl"])
    if device == "cpu":  # one shape in each 16-bit dtype on CPU; on CUDA every shape runs in fp16 already
        cases += _cases("medium", [(2, 320, 64, 64)], 32, ["bf16", "fp16"], ["contig", "cl"])
    return cases


def large_cases(device: str) -> list[Case]:
    # 3-D volumes, G=8, both precisions and both layouts.
    cases = _cases("large", [(2, 32, 64, 64, 64)], 8, ["fp32", "bf16"], ["contig", "cl3d"])
    # N=1 with a huge spatial size and G=1..4: N*G is smaller than the number of cores / SMs, so the
    # kernel has to split one group across workers. CUDA gets 4x the elements to fill the GPU.
    if device == "cpu":
        cases += _cases("large", [(1, 32, 512, 512)], 1, ["fp32"], ["contig", "cl"])
        cases += _cases("large", [(1, 8, 1024, 1024)], 2, ["fp32"], ["contig"])
        cases += _cases("large", [(1, 16, 64, 128, 128)], 4, ["fp32"], ["contig"])
    else:
        cases += _cases("large", [(1, 32, 1024, 1024)], 1, ["fp32", "bf16"], ["contig", "cl"])
        cases += _cases("large", [(1, 8, 2048, 2048)], 2, ["fp32"], ["contig"])
        cases += _cases("large", [(1, 16, 128, 128, 128)], 4, ["fp32"], ["contig"])
        # N = 1, G = 32, large spatial size (a diffusion decoder at batch 1): torch's one block per
        # (n, group) fills 32 of the SMs.
        cases += _cases("large", [(1, 128, 512, 512)], 32, ["fp32", "bf16"], ["contig", "cl"])
        # A batch of UNet activations over 64 MB whose slabs fit on chip (single-read forward).
        cases += _cases("large", [(16, 320, 64, 64)], 32, ["fp32"], ["contig", "cl"])
    return cases


def seed_shape(device: str) -> tuple[int, ...]:
    """The seed shape, scaled down to fit: CPU halves the spatial size and keeps N=2 (2 cores would
    take minutes otherwise); CUDA keeps C and the spatial size and takes the largest N that fits."""
    n, c, *spatial = SEED_SHAPE
    if device == "cpu":
        return (2, c, *(s // 2 for s in spatial))
    free_bytes, _ = torch.cuda.mem_get_info()
    per_sample = c * math.prod(spatial) * 4  # fp32 worst case
    budget = 0.8 * free_bytes / SEED_LIVE_TENSORS
    while n > 1 and n * per_sample > budget:
        n //= 2
    return (n, c, *spatial)


def seed_cases(device: str) -> list[Case]:
    dtypes = ["fp32"] if device == "cpu" else ["fp32", "bf16"]
    return _cases("seed", [seed_shape(device)], SEED_GROUPS, dtypes, ["contig", "cl3d"])


def fused_cases(device: str) -> list[Case]:
    # GroupNorm + SiLU at a UNet level and on a 3-D volume.
    if device == "cpu":
        return (_cases("fused", [(2, 320, 64, 64)], 32, ["fp32"], ["contig", "cl"], "silu")
                + _cases("fused", [(2, 32, 64, 64, 64)], 8, ["bf16"], ["contig"], "silu"))
    return (_cases("fused", [(2, 320, 64, 64)], 32, ["fp16"], ["contig", "cl"], "silu")
            + _cases("fused", [(16, 320, 64, 64)], 32, ["fp32"], ["contig"], "silu"))


SWEEP_BATCHES = (1, 2, 4, 8, 16)
SWEEP_CHANNELS = (128, 320, 640, 1280)
SWEEP_PIXELS = (8, 16, 32, 64, 128)
# Elements a sweep tensor may have: 2^24 (64 MiB of float32) keeps the CPU sweep's 80 cases within
# ~10 minutes on 2 cores; a GPU takes the whole grid.
SWEEP_MAX_ELEMS = {"cpu": 1 << 24, "cuda": 1 << 30}


def sweep_cases(device: str) -> list[Case]:
    shapes = [(n, c, p, p) for n in SWEEP_BATCHES for c in SWEEP_CHANNELS for p in SWEEP_PIXELS
              if n * c * p * p <= SWEEP_MAX_ELEMS[device]]
    return _cases("sweep", shapes, 32, ["fp32"], ["contig", "cl"])


def all_cases(device: str, quick: bool, sweep: bool = False) -> list[Case]:
    if sweep:
        return sweep_cases(device)
    if quick:
        return quick_cases()
    return small_cases() + medium_cases(device) + large_cases(device) + seed_cases(device) + fused_cases(device)
