"""groupnorm_ext: fast, complete Group Normalization for PyTorch.

``import groupnorm_ext`` loads the op library (``lib/libgroupnorm_ext.so``, through the
Python module ``_C`` that links it), which registers ``torch.ops.groupnorm_ext.group_norm``
(differentiable), ``group_norm_forward`` and ``group_norm_backward`` for TorchScript,
torch.compile and eager use. C++ programs link the same library without Python:
``get_library_path()``, ``get_include()`` and ``cmake_prefix_path`` say where it lives.
"""
import os

import torch  # noqa: F401  (the op library links against libtorch)

from . import _C  # noqa: F401  (loads the op library, which registers the ops)
from . import _fake  # noqa: F401  (fake kernels for torch.compile / export)
from . import _vmap  # noqa: F401  (the vmap batching rule)
from .convert import convert_group_norm
from .functional import group_norm
from .modules import GroupNorm

__all__ = ["group_norm", "GroupNorm", "convert_group_norm", "cpu_capability", "built_with_cuda", "empty_cache",
           "get_library_path", "get_include", "cmake_prefix_path"]
__version__ = "0.1.0"

_ROOT = os.path.dirname(os.path.abspath(__file__))

# For find_package(GroupNormExt) in CMake, like torch.utils.cmake_prefix_path for Torch:
# cmake -DCMAKE_PREFIX_PATH="<torch.utils.cmake_prefix_path>;<groupnorm_ext.cmake_prefix_path>"
cmake_prefix_path = os.path.join(_ROOT, "share", "cmake")


def cpu_capability() -> str:
    """Which vectorized clone of the CPU loops this CPU runs (avx512, avx2 or baseline), and how the float16
    loops convert (F16C instructions, or integer arithmetic where the CPU lacks x86-64-v3)."""
    return _C.cpu_capability()


def empty_cache() -> int:
    """Unmaps the CPU output buffers (128 KiB and up) kept for reuse by later calls of the same size,
    as torch.cuda.empty_cache does for the GPU; returns the bytes released. The cache holds at most 1 GiB
    (and 256 buffers) of free buffers; GROUPNORM_EXT_OUTPUT_POOL=0 (set before the first call) turns it off."""
    return _C.empty_cache()


def built_with_cuda() -> bool:
    """Whether this build carries the CUDA kernels."""
    return _C.built_with_cuda()


def get_library_path() -> str:
    """Path of the op library libgroupnorm_ext.so (C++ only, depends on libtorch alone):
    what a C++ program links, or what torch.ops.load_library loads."""
    return os.path.join(_ROOT, "lib", "libgroupnorm_ext.so")


def get_include() -> str:
    """Folder to put on the include path for ``#include <groupnorm_ext/groupnorm_ext.h>``."""
    return os.path.join(_ROOT, "include")
