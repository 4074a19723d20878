"""Build of groupnorm_ext: the op library groupnorm_ext/lib/libgroupnorm_ext.so (C++ only,
links libtorch: what C++ programs load) and the Python module groupnorm_ext._C that links it.

CUDA is built when torch is a CUDA build and a CUDA toolkit is found (no GPU needed);
FORCE_CUDA=1 insists on it, GROUPNORM_EXT_DISABLE_CUDA=1 (or FORCE_CPU=1) turns it off.
TORCH_CUDA_ARCH_LIST picks the GPU architectures (default when no GPU is visible:
sm_80, sm_90, sm_100 + PTX). MAX_JOBS bounds parallel compile jobs.
"""
import glob
import os
import re
import shlex
import shutil
import subprocess
import sys
import sysconfig

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


def library_runtime_dirs(with_cuda):
    """RUNPATH of the op library: torch/lib (and with CUDA, the pip nvidia folder holding
    libcudart), relative to groupnorm_ext/lib/ in site-packages, then absolute."""
    import torch

    site = os.path.dirname(os.path.dirname(os.path.abspath(torch.__file__)))
    dirs = [os.path.join(site, "torch", "lib")]
    if with_cuda:
        dirs += sorted(os.path.dirname(f) for f in glob.glob(os.path.join(site, "nvidia", "*", "lib",
                                                                            "libcudart.so*")))
    return ["$ORIGIN/../../" + os.path.relpath(d, site) for d in dirs] + dirs


# The op library: a plain shared library (no Python, no libtorch_python) that C++ programs
# link and the Python module loads. Built as an extension named after the file it becomes.
LIBRARY_EXT = "groupnorm_ext.lib.libgroupnorm_ext"
LIBRARY_FILE = "libgroupnorm_ext.so"



def shared_libstdcxx_link_args():
    """libstdc++ as a shared library, named by its path, for both of our libraries on Linux.

    torch and every other extension in the process use the one libstdc++.so.6. A toolchain
    that links libstdc++ statically (-static-libstdc++ from LDFLAGS, a compiler wrapper or
    its specs; seen on a GPU machine's g++ 13) puts a second copy inside our library: C++
    objects that cross over (the stream c10::str formats an error message in, with its
    locale's facets; exceptions) then meet the other copy's data, and a shape error's
    message lost its numbers (g++ 12) or crashed the process (g++ 13). Named before the
    compiler's own -lstdc++, the shared library satisfies every reference, so nothing is
    taken from the archive. Skipped where the compiler does not know the file (not GCC's
    libstdc++, not Linux)."""
    if not sys.platform.startswith("linux"):
        return []
    cxx = os.environ.get("CXX") or sysconfig.get_config_var("CXX") or "c++"
    try:
        found = subprocess.run(shlex.split(cxx) + ["-print-file-name=libstdc++.so.6"], capture_output=True,
                               text=True, timeout=60).stdout.strip()
    except (OSError, ValueError, subprocess.SubprocessError):
        return []
    return [os.path.realpath(found)] if os.path.isabs(found) and os.path.isfile(found) else []


def aten_uses_openmp():
    """Whether the installed torch's ATen parallelizes with OpenMP (ATen/Config.h)."""
    import torch

    config = os.path.join(os.path.dirname(torch.__file__), "include", "ATen", "Config.h")
    try:
        with open(config) as f:
            return "#define AT_PARALLEL_OPENMP 1" in f.read()
    except OSError:
        return False

def build_extensions():
    """The op library groupnorm_ext/lib/libgroupnorm_ext.so (kernels + TORCH_LIBRARY
    registrations, every csrc source outside csrc/python/) and the pybind11 module
    groupnorm_ext._C (csrc/python/), which links it with rpath $ORIGIN/lib."""
    with_cuda, cuda_home = want_cuda()
    if with_cuda:
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension at import
    from torch.utils import cpp_extension

    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) +
                     glob.glob(os.path.join("csrc", "cpu", "*.cpp")) +
                     glob.glob(os.path.join("csrc", "autograd", "*.cpp")) +
                     glob.glob(os.path.join("csrc", "autocast", "*.cpp")))
    python_sources = sorted(glob.glob(os.path.join("csrc", "python", "*.cpp")))
    cxx_flags = ["-O3", "-std=c++20", "-fvisibility=hidden"]
    # at::parallel_for is a header template: with an OpenMP build of ATen it is a
    # `#pragma omp parallel`, which runs on ONE thread unless this code is compiled with
    # -fopenmp. Linking -fopenmp records libgomp.so.1, the soname torch already loads.
    library_cxx_flags = cxx_flags + (["-fopenmp"] if aten_uses_openmp() else [])
    define_macros = []
    include_dirs = [os.path.join(ROOT, "csrc"), os.path.join(ROOT, "groupnorm_ext", "include")]
    # A SONAME, so that whatever links the library records "libgroupnorm_ext.so", not a path.
    library_link_args = [f"-Wl,-soname,{LIBRARY_FILE}"]
    # Where the library finds libtorch (and a CUDA torch's cudart) at run time in a C++
    # program, which needs not link every torch library itself: beside us in site-packages
    # once installed (torch's own libraries use the same $ORIGIN/../../ form), else where
    # the torch we build against lies (in-tree and editable builds).
    library_link_args += [f"-Wl,-rpath,{d}" for d in library_runtime_dirs(with_cuda)]
    if aten_uses_openmp():
        library_link_args.append("-fopenmp")
    libstdcxx = shared_libstdcxx_link_args()
    library_link_args += libstdcxx
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
        library = cpp_extension.CUDAExtension(
            LIBRARY_EXT, sources + cu_sources, include_dirs=list(include_dirs),
            define_macros=define_macros, extra_link_args=library_link_args,
            extra_compile_args={"cxx": library_cxx_flags, "nvcc": nvcc_flags})
    else:
        library = cpp_extension.CppExtension(
            LIBRARY_EXT, sources, include_dirs=list(include_dirs), define_macros=define_macros,
            extra_link_args=library_link_args, extra_compile_args={"cxx": library_cxx_flags})
    # The library uses libtorch only: no Python bindings of torch.
    library.libraries = [lib for lib in library.libraries if lib != "torch_python"]
    module = cpp_extension.CppExtension(
        "groupnorm_ext._C", python_sources, include_dirs=list(include_dirs),
        libraries=["groupnorm_ext"], extra_link_args=["-Wl,-rpath,$ORIGIN/lib"] + libstdcxx,
        extra_compile_args={"cxx": cxx_flags})
    print(f"groupnorm_ext: building {'CUDA + CPU' if with_cuda else 'CPU-only'} op library"
          + (f" (CUDA_HOME={cuda_home}, TORCH_CUDA_ARCH_LIST={os.environ.get('TORCH_CUDA_ARCH_LIST')})"
             if with_cuda else ""))

    class BuildExt(cpp_extension.BuildExtension):
        """Keeps object files in a persistent folder per torch build, build/temp-<flavour>
        (the Python module's in python/ below it): editable installs otherwise compile in a
        fresh temporary folder each time, so ninja could never skip an unchanged translation
        unit. Names the op library libgroupnorm_ext.so, links
        it without libpython, and links the Python module against it."""

        def finalize_options(self):
            super().finalize_options()
            import torch

            flavour = f"torch{torch.__version__}-{'cuda' if with_cuda else 'cpu'}".replace("+", "_")
            self.build_temp = os.path.join(ROOT, "build", f"temp-{flavour}")

        def get_ext_filename(self, ext_name):
            parts = ext_name.split(".")
            if parts[-1] == LIBRARY_EXT.split(".")[-1]:
                return os.path.join(*parts[:-1], LIBRARY_FILE)
            return super().get_ext_filename(ext_name)

        def get_libraries(self, ext):
            return ext.libraries if ext.name == LIBRARY_EXT else super().get_libraries(ext)

        def build_extension(self, ext):
            if ext.name == LIBRARY_EXT:
                return super().build_extension(ext)
            # The Python module: its own ninja folder (each target writes a build.ninja), and
            # linked against the library just built (listed first).
            build_temp = self.build_temp
            self.build_temp = os.path.join(build_temp, "python")
            try:
                ext.library_dirs.insert(0, os.path.dirname(self.get_ext_fullpath(LIBRARY_EXT)))
                super().build_extension(ext)
            finally:
                self.build_temp = build_temp

        def copy_extensions_to_source(self):
            # --inplace and editable installs copy into the source tree: groupnorm_ext/lib/
            # is not in git, so create it.
            build_py = self.get_finalized_command("build_py")
            for ext in self.extensions:
                inplace_file, _ = self._get_inplace_equivalent(build_py, ext)
                os.makedirs(os.path.dirname(inplace_file) or ".", exist_ok=True)
            super().copy_extensions_to_source()

    return [library, module], BuildExt.with_options(use_ninja=True)


if __name__ == "__main__":  # as pip and `python setup.py` run it; tests import find_cuda_home
    ext_modules, build_ext = build_extensions()
    setup(
        name="groupnorm_ext",
        version="0.1.0",
        packages=["groupnorm_ext"],
        # For C++ users: the library's header and CMake package config (the library itself
        # is built into groupnorm_ext/lib/).
        package_data={"groupnorm_ext": ["include/groupnorm_ext/*.h",
                                        "share/cmake/GroupNormExt/*.cmake"]},
        ext_modules=ext_modules,
        cmdclass={"build_ext": build_ext},
        zip_safe=False,
    )
