"""The timing harness: cases, contenders, verification and interleaved timing.

A :class:`Case` is one problem (a kernel on one shape, in one dtype). Its ``setup``
turns a seeded ``numpy.random.Generator`` into a dict of inputs (random normal,
never zeros: zeros would let a kernel skip work or hide a wrong answer), and each
:class:`Contender` turns those inputs into a zero-argument callable -- all the
preparation a fair user would do once (converting to torch tensors, building the
autograd graph) happens there, outside the timed region.

Timing, built for a small, noisy machine:

* Every contender is first run once and its result checked against the reference
  contender (the NumPy baseline); a mismatch aborts the run (:class:`VerificationError`).
* Contenders are then timed in **interleaved rounds** -- one sample of each per
  round (A B C, C B A, A B C, ...; the direction alternates so that no contender
  always runs right after the same neighbour) -- until the case's time budget is
  spent. Load from other processes, CPU frequency drift and thermal changes hit
  all contenders alike instead of whichever happened to run during the disturbance.
* Reported time = the **median** over rounds. Speed-up ratios are the median of
  the per-round ratios (paired samples), which cancels slow drift even better; they
  agree closely with the ratio of the medians on a quiet machine.
* The garbage collector is off while a round runs.
* Idle thread pools must not spin while another contender runs: ``python -m fastnn
  bench`` runs in a child process with short OpenBLAS / libgomp spin times (see
  ``ISOLATION_ENV`` in child.py), and the pytest suites set the same in bench/conftest.py.
* :class:`CpuMonitor` measures how many CPUs other processes used during each case,
  so results disturbed by a shared machine are flagged instead of trusted.
"""
import contextlib
import gc
import math
import os
import statistics
import time
import zlib
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

import numpy as np

__all__ = ["Contender", "call_contender", "Case", "Budget", "CaseResult", "VerificationError", "CpuMonitor",
           "wait_until_idle", "thread_settings", "prepare", "verify", "run_case", "compare", "to_numpy"]


class VerificationError(AssertionError):
    """A contender's result disagrees with the reference: timing it would be meaningless."""


@dataclass
class Contender:
    """One implementation racing in a case.

    make(inputs) -> fn
        Does the untimed preparation and returns a zero-argument callable; the
        callable is what gets timed.
    to_numpy(result) -> arrays
        Maps fn's result to NumPy arrays in the reference's layout (e.g. a torch
        channels_last tensor back to NHWC); default :func:`to_numpy`.
    requires
        Name of an optional module ("torch"); the contender is skipped without it.
    """
    name: str
    make: Callable[[Dict[str, Any]], Callable[[], Any]]
    to_numpy: Optional[Callable[[Any], Any]] = None
    requires: Optional[str] = None

    def available(self):
        if self.requires == "torch":
            from fastnn._bench.baselines import get_torch
            return get_torch() is not None
        if self.requires:
            import importlib.util
            return importlib.util.find_spec(self.requires) is not None
        return True


def call_contender(name, fn, names, *args, **kwargs):
    """A :class:`Contender` timing ``fn(inputs[names[0]], ..., *args, **kwargs)``: the
    input arrays are looked up once, untimed (fastnn's function and its NumPy baseline
    are called alike)."""
    def make(inputs):
        arrays = [inputs[n] for n in names]
        return lambda: fn(*arrays, *args, **kwargs)
    return Contender(name, make)


@dataclass
class Case:
    """One benchmark problem: inputs, work counts and contenders.

    ``flops`` (floating-point operations per call) gives GFLOP/s against the GEMM
    ceiling; a case with only ``bytes`` (minimum memory traffic per call) is
    memory-bound and is rated in GB/s against the copy ceiling.
    """
    name: str
    family: str
    setup: Callable[[np.random.Generator], Dict[str, Any]]
    contenders: List[Contender]
    flops: Optional[float] = None
    bytes: Optional[float] = None
    dtype: str = "float32"
    reference: str = "numpy"
    rtol: float = 1e-3
    params: Dict[str, Any] = field(default_factory=dict)

    @property
    def id(self):
        """The name as one token (for pytest ids and command lines)."""
        return "-".join(self.name.split())

    @property
    def seed(self):
        # Deterministic per case, different between cases.
        return zlib.crc32(f"{self.family}/{self.name}".encode())

    def make_inputs(self):
        return self.setup(np.random.default_rng(self.seed))

    def contender(self, name):
        for c in self.contenders:
            if c.name == name:
                return c
        raise KeyError(f"case {self.name!r} has no contender {name!r}")

    def contender_names(self, available_only=True):
        return [c.name for c in self.contenders if not available_only or c.available()]


@dataclass
class Budget:
    """How long to time one case: rounds continue until ``seconds`` have been spent
    (at least ``min_rounds``, at most ``max_rounds``), after ``warmup_rounds``."""
    seconds: float = 5.0
    min_rounds: int = 5
    max_rounds: int = 1000
    warmup_rounds: int = 1
    min_sample_s: float = 1e-3   # calls shorter than this are batched into one sample


# ------------------------------------------------------------------ threads
@contextlib.contextmanager
def thread_settings(n_threads, torch=None):
    """Give every contender the same thread count: fastnn's OpenMP kernels, the BLAS
    that NumPy calls (threadpoolctl), and torch's intra-op pool when torch is given."""
    import fastnn
    from threadpoolctl import threadpool_limits
    old_torch = torch.get_num_threads() if torch is not None else None
    with fastnn.threads(n_threads), threadpool_limits(limits=n_threads, user_api="blas"):
        if torch is not None:
            torch.set_num_threads(n_threads)
        try:
            yield
        finally:
            if torch is not None:
                torch.set_num_threads(old_torch)


# ------------------------------------------------------------------ other processes
class CpuMonitor:
    """How many CPUs other processes kept busy (Linux /proc; None elsewhere).

    (busy jiffies of the whole machine, steal included) - (this process's jiffies),
    divided by the wall time: 0 on an idle machine, ~1 when another process kept one
    core busy. Both counts come from the same tick accounting, so over a few seconds
    the error is a few hundredths of a CPU.
    """

    def __init__(self):
        self.start = self._snap()

    @staticmethod
    def _snap():
        try:
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
            with open("/proc/self/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            own = int(fields[11]) + int(fields[12])  # utime + stime, all threads
        except (OSError, ValueError, IndexError):
            return None
        busy = sum(v) - v[3] - v[4]                   # minus idle and iowait
        return busy, own, time.perf_counter()

    def foreign_cpus(self):
        end = self._snap()
        if self.start is None or end is None or end[2] <= self.start[2]:
            return None
        tck = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        other = (end[0] - self.start[0]) - (end[1] - self.start[1])
        return max(0.0, other / tck / (end[2] - self.start[2]))


def wait_until_idle(max_seconds, threshold=0.15, window=0.5):
    """Wait (up to max_seconds) until other processes use < threshold CPUs over a window.

    Returns the last measured foreign load (None when it cannot be measured)."""
    deadline = time.perf_counter() + max_seconds
    while True:
        mon = CpuMonitor()
        time.sleep(window)
        load = mon.foreign_cpus()
        if load is None or load < threshold or time.perf_counter() >= deadline:
            return load


# ------------------------------------------------------------------ verification
def to_numpy(result):
    """Arrays (or tuples of arrays / None / torch tensors) as NumPy arrays."""
    if result is None:
        return None
    if isinstance(result, (tuple, list)):
        return tuple(to_numpy(r) for r in result)
    if isinstance(result, np.ndarray):
        return result
    if hasattr(result, "detach"):  # torch.Tensor
        return result.detach().cpu().numpy()
    return np.asarray(result)


def compare(result, reference, rtol):
    """Worst relative error of result against reference, and a message ('' if fine).

    The error of each array is ``max|a - ref| / max|ref|`` (norm-style: element-wise
    relative error is meaningless for outputs near zero), and non-finite values must
    sit at the same places. Shapes and dtypes must match exactly.
    """
    if isinstance(reference, tuple):
        if not isinstance(result, tuple) or len(result) != len(reference):
            return math.inf, f"expected a tuple of {len(reference)} results, got {type(result).__name__}"
        worst, msgs = 0.0, []
        for i, (a, r) in enumerate(zip(result, reference)):
            err, msg = compare(a, r, rtol)
            worst = max(worst, err)
            if msg:
                msgs.append(f"[{i}] {msg}")
        return worst, "; ".join(msgs)
    if reference is None:
        return (0.0, "") if result is None else (math.inf, "expected None")
    if result is None:
        return math.inf, "got None"
    a, r = np.asarray(result), np.asarray(reference)
    if a.shape != r.shape:
        return math.inf, f"shape {a.shape}, expected {r.shape}"
    if a.dtype != r.dtype:
        return math.inf, f"dtype {a.dtype}, expected {r.dtype}"
    fin_a, fin_r = np.isfinite(a), np.isfinite(r)
    if not np.array_equal(fin_a, fin_r):
        return math.inf, f"{int((fin_a != fin_r).sum())} non-finite values where the reference has none (or vice versa)"
    if a.size == 0:
        return 0.0, ""
    a64, r64 = a[fin_r].astype(np.float64), r[fin_r].astype(np.float64)
    scale = float(np.max(np.abs(r64))) if r64.size else 0.0
    diff = np.abs(a64 - r64)
    err = float(diff.max()) / scale if scale > 0 else float(diff.max())
    if not err <= rtol:
        where = np.unravel_index(int(np.argmax(np.where(fin_r, np.abs(a - r), -1))), a.shape)
        return err, (f"max error {err:.3g} x max|ref| > rtol {rtol:g} "
                     f"(at {tuple(int(i) for i in where)}: {a[where]!r} vs {r[where]!r})")
    return err, ""


def prepare(case, names, inputs=None):
    """Build the timed callables of the named contenders: {name: fn}."""
    if inputs is None:
        inputs = case.make_inputs()
    return {name: case.contender(name).make(inputs) for name in names}


def verify(case, fns, reference=None):
    """Run every contender once and compare with the reference contender.

    Returns ({name: relative error}, {name: seconds of the first call}); raises
    :class:`VerificationError` on a mismatch. The first call doubles as warm-up.
    """
    errors, first = {}, {}
    ref_name = case.reference
    results = {}
    for name, fn in fns.items():
        t0 = time.perf_counter()
        out = fn()
        first[name] = time.perf_counter() - t0
        conv = case.contender(name).to_numpy or to_numpy
        results[name] = conv(out)
    if reference is None:
        if ref_name not in results:
            raise VerificationError(f"{case.family}/{case.name}: reference contender {ref_name!r} missing")
        reference = results[ref_name]
    for name, res in results.items():
        err, msg = compare(res, reference, case.rtol)
        errors[name] = err
        if msg:
            raise VerificationError(
                f"{case.family}/{case.name}: {name} disagrees with {ref_name}: {msg}")
    return errors, first


# ------------------------------------------------------------------ timing
def _calibrate(fn, min_sample_s):
    """Calls per sample so that one sample lasts at least min_sample_s."""
    t0 = time.perf_counter()
    fn()
    t = time.perf_counter() - t0
    if t >= min_sample_s:
        return 1
    return int(min(10000, math.ceil(min_sample_s / max(t, 1e-7))))


def interleaved_timing(fns, budget):
    """Time the callables in interleaved rounds; returns ({name: [s per call]}, {name: number})."""
    names = list(fns)
    for _ in range(budget.warmup_rounds):
        for name in names:
            fns[name]()
    number = {name: _calibrate(fns[name], budget.min_sample_s) for name in names}
    samples = {name: [] for name in names}
    perf = time.perf_counter
    gc.collect()
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        start = perf()
        rounds = 0
        while True:
            order = names if rounds % 2 == 0 else names[::-1]
            for name in order:
                fn, k = fns[name], number[name]
                if k == 1:
                    t0 = perf()
                    fn()
                    samples[name].append(perf() - t0)
                else:
                    t0 = perf()
                    for _ in range(k):
                        fn()
                    samples[name].append((perf() - t0) / k)
            rounds += 1
            elapsed = perf() - start
            if rounds >= budget.max_rounds:
                break
            if rounds >= budget.min_rounds:
                # Stop at the budget, or one round early if that round would overshoot it.
                if elapsed >= budget.seconds or elapsed * (rounds + 1) / rounds > budget.seconds * 1.15:
                    break
    finally:
        if gc_was_enabled:
            gc.enable()
    return samples, number


def _stats(xs, number):
    xs_sorted = sorted(xs)
    q = statistics.quantiles(xs_sorted, n=4) if len(xs_sorted) >= 2 else [xs_sorted[0]] * 3
    return {"median_s": statistics.median(xs_sorted), "min_s": xs_sorted[0], "max_s": xs_sorted[-1],
            "q1_s": q[0], "q3_s": q[2], "rounds": len(xs_sorted), "calls_per_sample": number,
            "samples_s": [round(x, 9) for x in xs]}


def paired_ratio(samples, slow, fast):
    """Median over rounds of samples[slow][r] / samples[fast][r] (None if either is missing)."""
    if slow not in samples or fast not in samples:
        return None
    return statistics.median(a / b for a, b in zip(samples[slow], samples[fast]))


@dataclass
class CaseResult:
    case: Case
    timings: Dict[str, Dict[str, Any]]
    ratios: Dict[str, Optional[float]]
    errors: Dict[str, float]
    rate: Optional[float]            # fastnn GFLOP/s (flops) or GB/s (bytes only)
    rate_unit: Optional[str]
    pct_limit: Optional[float]
    seconds: float                   # wall time this case took, setup included
    foreign_cpus: Optional[float] = None   # CPUs other processes kept busy meanwhile

    def median_ms(self, name):
        t = self.timings.get(name)
        return None if t is None else t["median_s"] * 1e3

    def as_dict(self):
        c = self.case
        return {"name": c.name, "id": c.id, "family": c.family, "dtype": c.dtype,
                "params": c.params, "flops": c.flops, "bytes": c.bytes,
                "timings": self.timings, "ratios": self.ratios,
                "verification": {"reference": c.reference, "rtol": c.rtol,
                                 "max_rel_error": self.errors},
                "rate": self.rate, "rate_unit": self.rate_unit,
                "pct_limit": self.pct_limit, "wall_s": self.seconds,
                "other_processes_cpus": self.foreign_cpus}


def run_case(case, budget, limits=None, contenders=None, subject="fastnn"):
    """Verify and time one case; returns a :class:`CaseResult`."""
    t_start = time.perf_counter()
    names = contenders or case.contender_names()
    if case.reference not in names:
        names = [case.reference] + list(names)
    inputs = case.make_inputs()
    fns = prepare(case, names, inputs)
    errors, _ = verify(case, fns)
    monitor = CpuMonitor()
    samples, number = interleaved_timing(fns, budget)
    foreign = monitor.foreign_cpus()
    timings = {name: _stats(samples[name], number[name]) for name in names}
    ratios = {f"vs_{other}": paired_ratio(samples, other, subject)
              for other in names if other != subject}
    rate = unit = pct = None
    if subject in timings:
        t = timings[subject]["median_s"]
        if case.flops:
            rate, unit = case.flops / t / 1e9, "GFLOP/s"
            if limits:
                ceiling = limits.get("gemm_float64") if case.dtype == "float64" else None
                pct = 100.0 * rate / (ceiling or limits["gemm"])["gflops"]
        elif case.bytes:
            rate, unit = case.bytes / t / 1e9, "GB/s"
            if limits:
                pct = 100.0 * rate / limits["copy"]["gbps"]
    del fns, inputs
    return CaseResult(case, timings, ratios, errors, rate, unit, pct,
                      time.perf_counter() - t_start, foreign)


def geomean(values):
    vals = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not vals:
        return None
    return math.exp(sum(math.log(v) for v in vals) / len(vals))
