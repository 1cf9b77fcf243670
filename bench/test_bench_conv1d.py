"""conv1d forward/backward against NumPy and PyTorch."""
FAMILY = "conv1d"


def test_conv1d(run_case_benchmark, case, contender):
    run_case_benchmark(case, contender)
