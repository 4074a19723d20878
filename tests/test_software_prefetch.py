"""Software prefetch in the CPU loops (csrc/cpu/simd.h): the channels-last statistics prefetch rows ahead,
the channels-last normalization walks its rows in steps of about four lines, prefetching input and output
ahead of each step, and the channels-last gradient sums take their rows one at a time over their float sums
instead of four (data from memory, csrc/cpu/loops_backward.cpp). Only hints, the grouping of rows and the
order of the loads differ, so every output must be bitwise the one the loops write without prefetch. The switch (GROUPNORM_EXT_CPU_PREFETCH,
read once per process; by default on only for data beyond the caches) is forced on and off in two child
processes over the same inputs (the cases of test_streaming_stores: row lengths from 8 to 5200 bytes,
odd sizes, misaligned views, fused activations, four dtypes), with plain stores in both."""
import pytest

from reference import run_saving_child
from test_streaming_stores import CASES_SCRIPT, assert_cases_bitwise_equal


@pytest.fixture(scope="module")
def both_modes(tmp_path_factory):
    d = tmp_path_factory.mktemp("prefetch")
    plain = dict(GROUPNORM_EXT_STREAMING_STORES="0")
    return (run_saving_child(CASES_SCRIPT, d / "prefetch.pt", GROUPNORM_EXT_CPU_PREFETCH="1", **plain),
            run_saving_child(CASES_SCRIPT, d / "plain.pt", GROUPNORM_EXT_CPU_PREFETCH="0", **plain))


def test_prefetched_outputs_are_bitwise_the_plain_ones(both_modes):
    assert_cases_bitwise_equal(*both_modes)
