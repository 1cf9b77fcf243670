"""The printed report of ``python -m fastnn bench``: the header lines and the
fixed-width table, one row per case as it finishes."""
import math
import os

from fastnn._bench.child import ISOLATION_UNSET
from fastnn._bench.harness import geomean

__all__ = ["BUSY_FLAG_CPUS", "Table", "header_lines"]

# A case is flagged when other processes kept at least this many CPUs busy meanwhile.
BUSY_FLAG_CPUS = 0.15


def _ms(v):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:.1f}"
    if v >= 10:
        return f"{v:.2f}"
    return f"{v:.3f}"


def _num(v, fmt):
    return "-" if v is None or not math.isfinite(v) else format(v, fmt)


class Table:
    """Fixed-width rows, printed as each case finishes (the run is long)."""

    def __init__(self, cases, out):
        self.out = out
        self.w_case = max([len("case"), len("geomean")] + [len(c.name) for c in cases])
        rated = {("GFLOP/s" if c.flops else "GB/s") for c in cases}
        self.rate_head = rated.pop() if len(rated) == 1 else "rate"
        self.heads = ["dtype", "fastnn ms", "numpy ms", "torch ms", "x numpy", "x torch",
                      self.rate_head, "% limit"]
        self.widths = [7, 10, 10, 10, 8, 8, 9, 8]

    @property
    def width(self):
        return self.w_case + sum(self.widths) + 2 * len(self.widths)

    def _line(self, first, cells, note=""):
        parts = [first.ljust(self.w_case), cells[0].ljust(self.widths[0])]
        parts += [c.rjust(w) for c, w in zip(cells[1:], self.widths[1:])]
        print(("  ".join(parts) + note).rstrip(), file=self.out, flush=True)

    def header(self):
        self._line("case", self.heads)
        print("-" * self.width, file=self.out)

    def row(self, r, note=""):
        rate = _num(r.rate, ".1f")
        if self.rate_head == "rate" and r.rate is not None:
            rate = f"{r.rate:.1f} {'GF/s' if r.rate_unit == 'GFLOP/s' else 'GB/s'}"
        self._line(r.case.name, [r.case.dtype, _ms(r.median_ms("fastnn")), _ms(r.median_ms("numpy")),
                                 _ms(r.median_ms("torch")), _num(r.ratios.get("vs_numpy"), ".2f"),
                                 _num(r.ratios.get("vs_torch"), ".2f"), rate,
                                 _num(r.pct_limit, ".1f")], note)

    def failed(self, case, message):
        print(f"{case.name.ljust(self.w_case)}  {case.dtype.ljust(self.widths[0])}  MISMATCH: {message}",
              file=self.out, flush=True)

    def geomean(self, results):
        gn = geomean(r.ratios.get("vs_numpy") for r in results)
        gt = geomean(r.ratios.get("vs_torch") for r in results)
        print("-" * self.width, file=self.out)
        self._line("geomean", ["", "", "", "", _num(gn, ".2f"), _num(gt, ".2f"), "", ""])
        return gn, gt


def header_lines(env, limits, n_threads, torch, budget, quick, isolation):
    fn = env.get("fastnn", {})
    lines = [f"fastnn bench -- fastnn {fn.get('version', '?')}, {n_threads} thread(s) for fastnn, "
             f"NumPy's BLAS{' and torch' if torch is not None else ''}"
             f"{' (quick)' if quick else ''}"]
    lines.append(f"machine : {env['cpu']}, {os.cpu_count()} CPUs ({fn.get('cpus_available', '?')} "
                 f"available), {env['platform']}")
    blas = fn.get("blas") or []
    blas_s = ", ".join(sorted({f"{b.get('internal_api')} {b.get('version')} ({b.get('architecture')})"
                               for b in blas})) or "?"
    lines.append(f"software: Python {env['python']}, NumPy {env['numpy']}, SciPy {env.get('scipy', '?')}, "
                 + (f"torch {torch.__version__}" if torch is not None else "torch not used")
                 + f"; BLAS {blas_s}")
    if "error" in fn:
        lines.append(f"fastnn  : configuration unavailable ({fn['error']})")
    else:
        ukl = fn.get("ukernel_level")
        lines.append(f"fastnn  : {fn.get('compiler')}, OpenMP {'yes' if fn.get('openmp') else 'NO'}, "
                     f"SIMD baseline {'+'.join(fn.get('simd_baseline') or [])}"
                     + (f", micro-kernel level {ukl}" if ukl is not None else "")
                     + f", flags {fn.get('flags')}")
    g, c = limits["gemm"], limits["copy"]
    lines.append(f"limits  : float32 GEMM {g['gflops']:.1f} GFLOP/s ({g['how']}); "
                 f"memory copy {c['gbps']:.1f} GB/s ({c['how']})")
    g64 = limits.get("gemm_float64")
    if g64:
        lines.append(f"          float64 GEMM {g64['gflops']:.1f} GFLOP/s ({g64['how']}), "
                     f"the ceiling of the float64 rows")
    unset = {k: v for k, v in (isolation or {}).items() if k in ISOLATION_UNSET}
    lines.append("NumPy   : " + (
        "BLAS at its real speed in this child (" + ", ".join(f"{k} {v}" for k, v in unset.items())
        + "; the user's environment is otherwise kept)" if unset else
        "BLAS as the environment configures it (OPENBLAS_CORETYPE="
        f"{os.environ.get('OPENBLAS_CORETYPE', 'unset')}, OPENBLAS_L2_SIZE="
        f"{os.environ.get('OPENBLAS_L2_SIZE', 'unset')})"))
    lines.append(f"timing  : contenders interleaved round by round, ~{budget.seconds:g} s per case, "
                 f">= {budget.min_rounds} rounds; ms = median; x numpy / x torch = peer time / fastnn "
                 f"time (> 1: fastnn faster), median of per-round ratios; % limit = fastnn's rate / "
                 f"GEMM ceiling (copy ceiling for GB/s)")
    if isolation:
        lines.append("isolation: child process with " + " ".join(
            f"{k}={v}" for k, v in isolation.items() if k not in ISOLATION_UNSET)
                     + " (idle BLAS/OpenMP threads stop spinning at once; freed memory stays in the "
                       "heap, no page faults: see ISOLATION_ENV in fastnn/_bench/cli.py)")
    else:
        lines.append("isolation: none (in-process, or set by the caller: OPENBLAS_THREAD_TIMEOUT="
                     f"{os.environ.get('OPENBLAS_THREAD_TIMEOUT', 'unset')}, GOMP_SPINCOUNT="
                     f"{os.environ.get('GOMP_SPINCOUNT', 'unset')}, OMP_WAIT_POLICY="
                     f"{os.environ.get('OMP_WAIT_POLICY', 'unset')}, MALLOC_MMAP_THRESHOLD_="
                     f"{os.environ.get('MALLOC_MMAP_THRESHOLD_', 'unset')}, MALLOC_TRIM_THRESHOLD_="
                     f"{os.environ.get('MALLOC_TRIM_THRESHOLD_', 'unset')})")
    other = (limits.get("attempts") or [{}])[-1].get("other_processes_cpus")
    if other is not None and other >= BUSY_FLAG_CPUS:
        lines.append(f"WARNING : other processes kept {other:.2f} CPUs busy while the limits were "
                     "measured -- the ceilings may be low; cases disturbed the same way are marked *")
    return lines
