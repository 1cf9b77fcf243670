"""relu_backward, sigmoid, softmax and softmax cross-entropy against NumPy and PyTorch."""
FAMILY = "activations"


def test_activations(run_case_benchmark, case, contender):
    run_case_benchmark(case, contender)
