"""pytest-benchmark suites of fastnn: ``python -m pytest bench --benchmark-only``.

Not part of the normal test run (``testpaths = ["tests"]``). The cases, inputs and
NumPy baselines come from :mod:`fastnn._bench` -- the same registry that
``python -m fastnn bench`` races -- so each case is defined once. Each contender's
result is checked against the NumPy baseline before it is timed.

Useful options: ``--benchmark-group-by=group`` (the default here: one table per case),
``--benchmark-max-time=SECONDS``, ``--benchmark-json=FILE``, ``-k fwd``,
``--bench-threads=N`` (defined below). A suite is a module ``test_bench_<family>.py``
with ``FAMILY = "<family>"`` and one test taking ``case`` and ``contender``: it runs for
every contender of every case of ``fastnn._bench.cases_<family>`` (the cases ``python -m
fastnn bench`` runs), each case one pytest-benchmark group.
"""
import os
import sys

# The isolation `python -m fastnn bench` uses (see ISOLATION_ENV in fastnn/_bench/child.py):
# idle OpenBLAS / libgomp threads stop spinning right away, so one benchmark's thread
# pool does not steal a core from the next. The libraries read these variables when
# they load, which has not happened yet unless something imported NumPy before pytest
# loaded this file. (glibc's malloc settings are read at process start, too early for
# this file: run `MALLOC_MMAP_THRESHOLD_=4294967296 MALLOC_TRIM_THRESHOLD_=4294967296
# python -m pytest bench ...` for page-fault-free, steadier timings.)
if "numpy" not in sys.modules:
    os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ.setdefault("GOMP_SPINCOUNT", "10000")

import pytest  # noqa: E402

try:
    import pytest_benchmark  # noqa: F401,E402
except ImportError:  # without the plugin there is no `benchmark` fixture: skip the suites
    collect_ignore_glob = ["test_*.py"]


def pytest_generate_tests(metafunc):
    """A suite module names its family (``FAMILY = "conv"``) and its test takes ``case``
    and ``contender``: it runs for every contender of every case of that family."""
    family = getattr(metafunc.module, "FAMILY", None)
    if family is None or not {"case", "contender"} <= set(metafunc.fixturenames):
        return
    from fastnn._bench import load_family
    pairs = [(case, name) for case in load_family(family)
             for name in case.contender_names(available_only=False)]
    metafunc.parametrize("case,contender", pairs, ids=[f"{c.id}-{n}" for c, n in pairs])


def pytest_addoption(parser):
    parser.addoption("--bench-threads", type=int, default=None, metavar="N",
                     help="threads for fastnn, NumPy's BLAS and torch (default: fastnn's default)")


@pytest.fixture(scope="session")
def bench_threads(request):
    """Hold fastnn, NumPy's BLAS and torch to the same thread count for the session."""
    import fastnn
    from fastnn._bench.baselines import get_torch
    from fastnn._bench.harness import thread_settings
    n = request.config.getoption("--bench-threads") or fastnn.get_num_threads()
    with thread_settings(n, get_torch()):
        yield n


@pytest.fixture(scope="session")
def _bench_state():
    return {}


@pytest.fixture
def run_case_benchmark(benchmark, bench_threads, _bench_state):
    """``run_case_benchmark(case, contender)``: verify, then time one contender of a case.

    Inputs and the NumPy reference result are built once per case and shared by its
    contenders; a contender that is not installed (torch) is skipped.
    """
    from fastnn._bench.harness import VerificationError, prepare, to_numpy, verify

    def run(case, contender):
        c = case.contender(contender)
        if not c.available():
            pytest.skip(f"{contender} is not installed")
        key = (case.family, case.name)
        if key not in _bench_state:
            _bench_state.clear()        # keep only one case's arrays alive
            inputs = case.make_inputs()
            ref_fn = prepare(case, [case.reference], inputs)[case.reference]
            ref = (case.contender(case.reference).to_numpy or to_numpy)(ref_fn())
            _bench_state[key] = (inputs, ref)
        inputs, ref = _bench_state[key]
        fn = prepare(case, [contender], inputs)[contender]
        try:
            errors, _ = verify(case, {contender: fn}, reference=ref)
        except VerificationError as exc:
            pytest.fail(str(exc), pytrace=False)
        benchmark.group = case.name
        benchmark.extra_info.update(
            family=case.family, case=case.name, contender=contender, dtype=case.dtype,
            flops=case.flops, bytes=case.bytes, threads=bench_threads,
            max_rel_error=errors[contender], **{f"param_{k}": v for k, v in case.params.items()})
        result = benchmark(fn)
        stats = getattr(benchmark, "stats", None)
        if stats is not None and case.flops:
            try:
                benchmark.extra_info["gflops"] = case.flops / stats.stats.median / 1e9
            except (AttributeError, ZeroDivisionError, TypeError):
                pass
        return result

    return run
