"""Deploy without Python: the op library libgroupnorm_ext.so depends on libtorch alone, and a C++
program (examples/cpp), built with CMake against the libtorch inside the installed torch wheel,
loads a TorchScript model saved from Python that calls torch.ops.groupnorm_ext.group_norm, runs
it and gets the same output as Python."""
import glob
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import groupnorm_ext

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "examples", "cpp")
BUILD_TIMEOUT_S = 900  # configure + one translation unit with torch/script.h, on 2 busy cores

# TorchScript is deprecated upstream but still a supported entry point of this extension
# (a FutureWarning in torch 2.14, a DeprecationWarning in 2.13)
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.*deprecated")


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tool(name):
    """The tool from this interpreter's environment (requirements.txt pins cmake), else PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    return here if os.access(here, os.X_OK) else shutil.which(name)


def _needed(path):
    """DT_NEEDED entries of an ELF file (readelf, from binutils beside g++)."""
    out = subprocess.run(["readelf", "-d", path], check=True, capture_output=True, text=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[([^\]]+)\]", out)


needs_binutils = pytest.mark.skipif(shutil.which("readelf") is None or shutil.which("nm") is None,
                                    reason="binutils (readelf, nm) not found")


def cmake_configure_args():
    """What find_package(Torch) and find_package(GroupNormExt) need for this torch."""
    args = ["-DCMAKE_PREFIX_PATH=" + ";".join([torch.utils.cmake_prefix_path,
                                                groupnorm_ext.cmake_prefix_path])]
    if torch.version.cuda is not None:
        # A CUDA torch's config looks for the CUDA toolkit (the real root: `nvcc` may be a
        # wrapper script elsewhere) and for nvrtc, which the pip nvidia packages ship.
        cuda_home = _load("groupnorm_ext_setup", os.path.join(ROOT, "setup.py")).find_cuda_home()
        if cuda_home is None:
            pytest.skip("torch is a CUDA build and no CUDA toolkit was found (set CUDA_HOME), "
                        "which find_package(Torch) requires")
        args += [f"-DCUDAToolkit_ROOT={cuda_home}", f"-DCUDA_TOOLKIT_ROOT_DIR={cuda_home}"]
        site = os.path.dirname(os.path.dirname(torch.__file__))
        nvrtc = sorted(glob.glob(os.path.join(site, "nvidia", "*", "lib", "libnvrtc.so.*[0-9]")))
        if nvrtc:
            args.append(f"-DCUDA_nvrtc_LIBRARY={nvrtc[0]}")
    return args


def test_library_paths():
    assert os.path.isfile(groupnorm_ext.get_library_path())
    assert os.path.isfile(os.path.join(groupnorm_ext.get_include(), "groupnorm_ext", "groupnorm_ext.h"))
    assert os.path.isfile(os.path.join(groupnorm_ext.cmake_prefix_path, "GroupNormExt",
                                       "GroupNormExtConfig.cmake"))


@needs_binutils
def test_library_has_no_python_dependency():
    lib = groupnorm_ext.get_library_path()
    needed = _needed(lib)
    assert "libtorch_cpu.so" in needed
    assert not [n for n in needed if "python" in n], needed
    undefined = subprocess.run(["nm", "-D", "--undefined-only", lib], check=True, capture_output=True,
                               text=True).stdout.split()
    assert not [s for s in undefined if s.startswith(("Py", "_Py"))]
    # ...and the Python module is the one that links it.
    assert "libgroupnorm_ext.so" in _needed(groupnorm_ext._C.__file__)


def test_library_loads_with_torch_ops_load_library():
    """What a Python program without our package would do; the ops are already there."""
    torch.ops.load_library(groupnorm_ext.get_library_path())
    assert torch.ops.groupnorm_ext.group_norm.default is not None


@pytest.fixture(scope="module")
def run_model(tmp_path_factory):
    """examples/cpp built with CMake; the path of the run_model program."""
    cmake = _tool("cmake")
    if cmake is None:
        pytest.skip("cmake not found (pip install cmake)")
    build = tmp_path_factory.mktemp("cpp-example-build")
    for step in ([cmake, "-S", EXAMPLE, "-B", str(build), *cmake_configure_args()],
                 [cmake, "--build", str(build)]):
        out = subprocess.run(step, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        assert out.returncode == 0, f"{' '.join(step)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}"
    return os.path.join(str(build), "run_model")


def test_cpp_program_runs_scripted_model(run_model, tmp_path):
    make_model = _load("groupnorm_ext_make_model", os.path.join(EXAMPLE, "make_model.py"))
    _, x, expected = make_model.save_example(str(tmp_path))
    out = subprocess.run([run_model, str(tmp_path / "model.pt"), str(tmp_path / "input.pt"),
                          str(tmp_path / "output.pt")], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "output [2, 16, 8, 8] float" in out.stdout, out.stdout
    assert f"CPU loops {groupnorm_ext.cpu_capability()}" in out.stdout
    # The same kernels on the same input: float32 agreement (the convolutions may pick
    # another algorithm in another process, so not asserted bitwise).
    torch.testing.assert_close(torch.load(str(tmp_path / "output.pt")), expected)
    printed_row = re.search(r"output\[0, 0, 0, :\] (.*)", out.stdout).group(1).split()
    torch.testing.assert_close(torch.tensor([float(v) for v in printed_row]), expected[0, 0, 0],
                               rtol=0, atol=6e-5)  # printed with 4 decimals


@needs_binutils
def test_cpp_program_needs_no_python(run_model):
    needed = _needed(run_model)
    assert "libgroupnorm_ext.so" in needed
    assert not [n for n in needed if "python" in n], needed


def test_cpp_program_reports_errors(run_model, tmp_path):
    out = subprocess.run([run_model, str(tmp_path / "missing.pt"), str(tmp_path / "input.pt")],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1 and "error:" in out.stderr
