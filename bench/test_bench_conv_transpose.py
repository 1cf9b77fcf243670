"""conv_transpose2d forward/backward against NumPy and PyTorch."""
FAMILY = "conv_transpose"


def test_conv_transpose(run_case_benchmark, case, contender):
    run_case_benchmark(case, contender)
