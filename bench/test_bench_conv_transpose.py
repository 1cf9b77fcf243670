"""conv_transpose: fastnn vs the NumPy baseline vs PyTorch.

The cases are fastnn._bench.cases_conv_transpose's (the ones ``python -m fastnn bench``
runs); each case is one pytest-benchmark group.
"""
import pytest

from fastnn._bench import load_family

CASES = load_family("conv_transpose")
CONTENDERS = ["fastnn", "numpy", "torch"]


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_conv_transpose(run_case_benchmark, case, contender):
    run_case_benchmark(case, contender)
