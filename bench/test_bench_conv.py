"""conv2d forward/backward, NCHW and NHWC, against NumPy and PyTorch."""
FAMILY = "conv"


def test_conv(run_case_benchmark, case, contender):
    run_case_benchmark(case, contender)
