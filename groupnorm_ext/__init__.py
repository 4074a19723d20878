"""groupnorm_ext: fast, complete Group Normalization for PyTorch.

``import groupnorm_ext`` loads the op library, which registers
``torch.ops.groupnorm_ext.group_norm`` (differentiable), ``group_norm_forward`` and
``group_norm_backward`` for TorchScript, torch.compile and eager use.
"""
import torch  # noqa: F401  (the op library links against libtorch)

from . import _C  # noqa: F401  (registers the ops)
from . import _fake  # noqa: F401  (fake kernels for torch.compile / export)
from .functional import group_norm
from .modules import GroupNorm

__all__ = ["group_norm", "GroupNorm", "cpu_capability", "built_with_cuda"]
__version__ = "0.1.0"


def cpu_capability() -> str:
    """Which vectorized clone of the CPU loops this CPU runs (avx512, avx2 or baseline)."""
    return _C.cpu_capability()


def built_with_cuda() -> bool:
    """Whether this build carries the CUDA kernels."""
    return _C.built_with_cuda()
