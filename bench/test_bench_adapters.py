"""adapters: fastnn.torch vs the raw fastnn kernel vs PyTorch, and a swapped model's
training step vs native PyTorch.

In this family the "numpy" contender is the raw fastnn kernel on the NumPy views (see
fastnn._bench.cases_adapters); the training-step case has no such contender.
"""
FAMILY = "adapters"


def test_adapters(run_case_benchmark, case, contender):
    run_case_benchmark(case, contender)
