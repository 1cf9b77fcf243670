"""Max and average pooling against NumPy and PyTorch."""
FAMILY = "pooling"


def test_pooling(run_case_benchmark, case, contender):
    run_case_benchmark(case, contender)
