"""Build of groupnorm_ext: the op library as the extension module groupnorm_ext._C.

CUDA is built when torch is a CUDA build and a CUDA toolkit is found (no GPU needed);
FORCE_CUDA=1 insists on it, GROUPNORM_EXT_DISABLE_CUDA=1 (or FORCE_CPU=1) turns it off.
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default when no GPU is visible:
sm_80, sm_90, sm_100 + PTX). MAX_JOBS bounds parallel compile jobs.
"""
import glob
import os
import re
import shutil
import sys

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CUDA_ARCH_LIST = "8.0;9.0;10.0+PTX"


def _truthy(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


def _is_toolkit_root(path):
    return bool(path) and os.path.isfile(os.path.join(path, "bin", "nvcc")) and os.path.isfile(
        os.path.join(path, "include", "cuda_runtime.h"))


def find_cuda_home():
    """The real CUDA toolkit root. An `nvcc` on PATH may be a wrapper script that execs the
    toolkit's nvcc from elsewhere (torch would then guess the wrapper's folder): read the
    script and follow the path it execs."""
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if _is_toolkit_root(os.environ.get(var)):
            return os.environ[var]
    nvcc = shutil.which("nvcc")
    if nvcc:
        real = os.path.realpath(nvcc)
        root = os.path.dirname(os.path.dirname(real))
        if _is_toolkit_root(root):
            return root
        try:
            with open(real, "r", errors="ignore") as f:
                text = f.read(65536)
        except OSError:
            text = ""
        for candidate in re.findall(r"(/[^\s'\"]+)/bin/nvcc\b", text):
            if _is_toolkit_root(candidate):
                return candidate
    for candidate in sorted(glob.glob("/usr/local/cuda*"), reverse=True):
        if _is_toolkit_root(candidate):
            return candidate
    return None


def want_cuda():
    if _truthy("GROUPNORM_EXT_DISABLE_CUDA") or _truthy("FORCE_CPU"):
        return False, None
    import torch

    cuda_home = find_cuda_home()
    if _truthy("FORCE_CUDA"):
        if torch.version.cuda is None or cuda_home is None:
            sys.exit("FORCE_CUDA=1 but torch is CPU-only (torch.version.cuda is None) or no CUDA "
                     "toolkit was found (set CUDA_HOME)")
        return True, cuda_home
    return torch.version.cuda is not None and cuda_home is not None, cuda_home


def pip_cuda_include_dirs():
    """Headers of the CUDA libraries (cublas, cusparse, ...) that torch's headers include come
    with the nvidia-* pip packages when the toolkit lacks them."""
    dirs = []
    for path in sys.path:
        for sub in ("nvidia/cu13/include", "nvidia/cu12/include"):
            d = os.path.join(path, sub)
            if os.path.isfile(os.path.join(d, "cusparse.h")):
                dirs.append(d)
        if dirs:
            break
    return dirs


def build_extension():
    with_cuda, cuda_home = want_cuda()
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    from torch.utils import cpp_extension

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) +
                     glob.glob(os.path.join("csrc", "cpu", "*.cpp")) +
                     glob.glob(os.path.join("csrc", "autograd", "*.cpp")))
    cxx_flags = ["-O3", "-std=c++20", "-fvisibility=hidden"]
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc")]
    if with_cuda:
        cu_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")) +
                            glob.glob(os.path.join("csrc", "cuda", "*.cpp")))
        if not os.path.isfile(os.path.join(cuda_home, "include", "cusparse.h")):
            include_dirs += pip_cuda_include_dirs()
        if not os.environ.get("TORCH_CUDA_ARCH_LIST"):
            import torch

            if not torch.cuda.is_available():
                os.environ["TORCH_CUDA_ARCH_LIST"] = DEFAULT_CUDA_ARCH_LIST
        define_macros.append(("GROUPNORM_EXT_WITH_CUDA", None))
        nvcc_flags = ["-O3", "-std=c++20", "--expt-relaxed-constexpr", "-lineinfo",
                      "-DGROUPNORM_EXT_WITH_CUDA"]
        ext = cpp_extension.CUDAExtension(
            "groupnorm_ext._C", sources + cu_sources, include_dirs=include_dirs,
            define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags, "nvcc": nvcc_flags})
    else:
        ext = cpp_extension.CppExtension(
            "groupnorm_ext._C", sources, include_dirs=include_dirs, define_macros=define_macros,
            extra_compile_args={"cxx": cxx_flags})
    print(f"groupnorm_ext: building {'CUDA + CPU' if with_cuda else 'CPU-only'} extension"
          + (f" (CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')})"
             if with_cuda else ""))
    class BuildExt(cpp_extension.BuildExtension):
        """Keeps object files in a persistent folder, per torch build: editable installs
        otherwise compile in a fresh temporary folder each time, so ninja could never skip
        an unchanged translation unit."""

        def finalize_options(self):
            super().finalize_options()
            import torch

            flavour = f"torch{torch.__version__}-{'cuda' if with_cuda else 'cpu'}".replace("+", "_")
            self.build_temp = os.path.join(ROOT, "build", f"temp-{flavour}")

    return ext, BuildExt.with_options(use_ninja=True)


ext, build_ext = build_extension()
setup(
    name="groupnorm_ext",
    version="0.1.0",
    packages=["groupnorm_ext"],
    ext_modules=[ext],
    cmdclass={"build_ext": build_ext},
    zip_safe=False,
)
