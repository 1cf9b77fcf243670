"""Compiled kernels behind :mod:`fastnn` (Cython + OpenMP + BLAS).

Nothing here validates its arguments: call the public API in :mod:`fastnn`.
"""
