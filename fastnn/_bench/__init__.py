"""fastnn's benchmark harness (``python -m fastnn bench``) and its case registry.

Layout
------
harness.py     Case / Contender, verification against the NumPy baseline, interleaved timing
limits.py      the machine's measured ceilings (float32 GEMM GFLOP/s, memory-copy GB/s)
baselines.py   the pure-NumPy baselines (and the lazy, optional torch import)
cli.py         the command line: options, selection, the run of each family
child.py       the isolation child process (ISOLATION_ENV) the run happens in
tables.py      the printed header and the table, one row per case
report.py      the environment record and --json
plot.py        --plot
cases_*.py     one module per benchmark family

Adding a family
---------------
Add a module ``cases_<family>.py`` beside this file that defines ``FAMILY =
"<family>"``, a one-line ``DESCRIPTION`` and ``cases()`` returning a list of
:class:`fastnn._bench.harness.Case`. It is discovered automatically, by
``python -m fastnn bench`` (``--only <family>``) and by the pytest-benchmark suites in
``bench/`` (which should hold a ``test_bench_<family>.py`` that names its ``FAMILY``;
bench/conftest.py loads the cases), so every case and baseline is defined exactly once.
"""
import importlib
import pkgutil
import warnings

__all__ = ["family_names", "load_family", "load_cases"]

_PREFIX = "cases_"


def family_names():
    """Names of the benchmark families present (from the cases_*.py modules), sorted."""
    return sorted(m.name[len(_PREFIX):] for m in pkgutil.iter_modules(__path__)
                  if m.name.startswith(_PREFIX))


def load_family(name):
    """The list of cases of one family (imports its module)."""
    if name not in family_names():
        raise KeyError(f"unknown benchmark family {name!r}; available: {', '.join(family_names())}")
    module = importlib.import_module(f"{__name__}.{_PREFIX}{name}")
    declared = getattr(module, "FAMILY", name)
    if declared != name:
        raise RuntimeError(f"{module.__name__} declares FAMILY = {declared!r}, expected {name!r}")
    cases = list(module.cases())
    for case in cases:
        if case.family != name:
            raise RuntimeError(f"case {case.name!r} of {module.__name__} has family {case.family!r}")
    names = [c.name for c in cases]
    if len(set(names)) != len(names):
        raise RuntimeError(f"{module.__name__} has duplicate case names")
    return cases


def load_cases(only=None, strict=None):
    """Cases of the families in ``only`` (all when None), as {family: [Case, ...]}.

    A family module that fails to import (its kernels not built yet, say) is an error
    when it was asked for by name (``strict``, the default when ``only`` is given) and
    a warning otherwise.
    """
    names = family_names() if not only else list(dict.fromkeys(only))
    strict = bool(only) if strict is None else strict
    unknown = [n for n in names if n not in family_names()]
    if unknown:
        raise KeyError(f"unknown benchmark famil{'ies' if len(unknown) > 1 else 'y'} "
                       f"{', '.join(map(repr, unknown))}; available: {', '.join(family_names())}")
    out = {}
    for name in names:
        try:
            out[name] = load_family(name)
        except Exception as exc:  # ImportError of an unbuilt kernel, a broken case module
            if strict:
                raise
            warnings.warn(f"benchmark family {name!r} skipped: {type(exc).__name__}: {exc}")
    return out
