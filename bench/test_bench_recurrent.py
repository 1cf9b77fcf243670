"""The LSTM cell and sequence against NumPy and PyTorch."""
FAMILY = "recurrent"


def test_recurrent(run_case_benchmark, case, contender):
    run_case_benchmark(case, contender)
