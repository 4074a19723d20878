"""torch's own catalogues for group norm (torch.testing._internal: the OpInfo of
nn.functional.group_norm, the ModuleInfo of nn.GroupNorm) pass with ours in torch's place: same
outputs, gradients and forward-mode tangents on every sample, the errors and messages torch's
error inputs expect, the same repr. They run in one child process (torch_catalogue.py says why)."""
import json
import os
import subprocess
import sys

import pytest

import groupnorm_ext

SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "torch_catalogue.py")


@pytest.fixture(scope="module")
def report():
    # the child imports the groupnorm_ext this process imported, installed or not (`python SCRIPT`
    # puts tests/ on its path, not the working directory)
    package_root = os.path.dirname(os.path.dirname(os.path.abspath(groupnorm_ext.__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, SCRIPT], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, f"torch_catalogue.py failed:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("part", ["op_samples", "op_errors", "module_samples", "module_errors"])
def test_torch_catalogue_passes_with_ours(report, part):
    result = report[part]
    assert result["checks"] > 0, f"{part}: torch's catalogue gave nothing to check"
    assert not result["failures"], f"{part}: {len(result['failures'])} of {result['checks']} failed:\n  " + \
        "\n  ".join(result["failures"])
