"""banded_matmul, masked_matmul and locally_connected2d against NumPy and PyTorch."""
FAMILY = "banded"


def test_banded(run_case_benchmark, case, contender):
    run_case_benchmark(case, contender)
