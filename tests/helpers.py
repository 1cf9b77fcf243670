"""Test helpers shared by the test modules (tests/ is on sys.path via conftest.py)."""
import numpy as np
import pytest


def snapshot(values):
    """(array, copy) pairs for the ndarrays among values, to check nothing changed."""
    return [(v, v.copy()) for v in values if isinstance(v, np.ndarray)]


def call_raises(exc, match, fn, *args, **kwargs):
    """fn(*args, **kwargs) raises exc matching `match`; no array argument changed."""
    snap = snapshot(list(args) + list(kwargs.values()))
    with pytest.raises(exc, match=match) as info:
        fn(*args, **kwargs)
    for arr, before in snap:
        np.testing.assert_array_equal(arr, before)
    return info
