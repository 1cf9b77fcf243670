"""The LSTM cell and sequence: fastnn vs the NumPy
baseline vs PyTorch.

The cases are fastnn._bench.cases_recurrent's (the ones ``python -m fastnn bench``
runs); each case is one pytest-benchmark group.
"""
import pytest

from fastnn._bench import load_family

CASES = load_family("recurrent")
CONTENDERS = ["fastnn", "numpy", "torch"]


@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_recurrent(run_case_benchmark, case, contender):
    run_case_benchmark(case, contender)
