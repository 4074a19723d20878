"""Shared pytest setup: make tests/reference.py importable under any import mode, seed every test,
register the `large` marker and the hypothesis profiles."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "large: needs about 10 GB of memory and ~1 minute (tensors over 2^31 elements); runs by default, "
        "deselect with -m 'not large'")


# Hypothesis profiles for the property-based tests (tests/test_fuzz.py). Pick one with the
# HYPOTHESIS_PROFILE environment variable:
#   ci   (default) bounded and derandomized: the same examples every run, a few seconds per test;
#   long           many more random examples, for local runs: HYPOTHESIS_PROFILE=long pytest tests/test_fuzz.py
try:
    from hypothesis import HealthCheck, settings
except ImportError:  # hypothesis is in requirements.txt; only test_fuzz.py needs it (it importorskips)
    pass
else:
    _common = dict(deadline=None, print_blob=True,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                          HealthCheck.function_scoped_fixture])
    settings.register_profile("ci", max_examples=200, derandomize=True, database=None, **_common)
    settings.register_profile("long", max_examples=20000, **_common)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield
