"""adapters: fastnn.torch vs the raw fastnn kernel vs PyTorch, and a swapped model's
training step vs native PyTorch.

The cases are fastnn._bench.cases_adapters' (the ones ``python -m fastnn bench``
runs); each case is one pytest-benchmark group. In this family the "numpy" contender
is the raw fastnn kernel on the NumPy views (see the module's notes); the training-step
case has no such contender.
"""
import pytest

from fastnn._bench import load_family

CASES = load_family("adapters")
PAIRS = [(case, name) for case in CASES for name in case.contender_names(available_only=False)]


@pytest.mark.parametrize("case,contender", PAIRS, ids=[f"{c.id}-{n}" for c, n in PAIRS])
def test_adapters(run_case_benchmark, case, contender):
    run_case_benchmark(case, contender)
