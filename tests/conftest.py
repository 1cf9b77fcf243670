"""Shared pytest setup: make tests/reference.py importable, reset thread settings."""
import os
import sys

import pytest

# pyproject uses --import-mode=importlib, which does not put tests/ on sys.path.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(autouse=True, scope="session")
def _parallel_teams_even_on_a_busy_machine():
    """The pool shrinks a team to one thread while other tasks hold the cores (see
    fastnn_ext/_runtime.h); on a loaded test machine that would leave the parallel
    paths untested. The tests of that behaviour switch it back on themselves."""
    from fastnn_ext import _runtime
    old = _runtime.configure(check_contention=False)
    yield
    _runtime.configure(**old)


@pytest.fixture(autouse=True)
def _convolutions_parallel_at_any_size():
    """The tests' convolutions are small; below 2^20 multiply-adds the cost model would
    run them serially, and the thread-count tests would compare serial with serial.
    Every test therefore runs convolutions on their thread count at any size (as the
    pool did before the "conv" cost kind); the cost model itself is tested in
    test_pool.py with its real threshold (the ``real_conv_cost_model`` fixture)."""
    from helpers import convolutions_parallel_at_any_size
    with convolutions_parallel_at_any_size():
        yield


@pytest.fixture
def real_conv_cost_model():
    """Undo _convolutions_parallel_at_any_size for one test."""
    from fastnn import _threads
    from fastnn_ext import _runtime
    old = _threads.SERIAL_BELOW["conv"]
    _threads.SERIAL_BELOW["conv"] = _runtime.SERIAL_BELOW["conv"]
    yield
    _threads.SERIAL_BELOW["conv"] = old


@pytest.fixture(autouse=True)
def _default_thread_count():
    """Every test starts and ends with fastnn's default thread count."""
    import fastnn
    fastnn.set_num_threads(None)
    yield
    fastnn.set_num_threads(None)
