"""Shared pytest setup: make tests/reference.py importable, reset thread settings."""
import os
import sys

import pytest

# pyproject uses --import-mode=importlib, which does not put tests/ on sys.path.
_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture(autouse=True)
def _default_thread_count():
    """Every test starts and ends with fastnn's default thread count."""
    import fastnn
    fastnn.set_num_threads(None)
    yield
    fastnn.set_num_threads(None)
