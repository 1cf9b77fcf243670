"""banded_matmul, masked_matmul and locally_connected2d: fastnn vs the NumPy
baseline vs PyTorch.

The cases are fastnn._bench.cases_banded's (the ones ``python -m fastnn bench``
runs); each case is one pytest-benchmark group.
"""
import pytest

from fastnn._bench import load_family

CASES = load_family("banded")
CONTENDERS = ["fastnn", "numpy", "torch"]


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_banded(run_case_benchmark, case, contender):
    run_case_benchmark(case, contender)
