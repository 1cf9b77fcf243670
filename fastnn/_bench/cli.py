"""``python -m fastnn bench``: race fastnn against NumPy (and PyTorch) on default shapes.

Prints, per benchmark family, one row per case -- median milliseconds of each
contender, speed-ups (``x numpy`` = NumPy time / fastnn time, so > 1 means fastnn is
faster), fastnn's GFLOP/s (or GB/s for memory-bound cases) and that rate as a
percentage of the machine's ceiling measured at start -- and a geometric-mean line.
"""
import argparse
import json
import math
import os
import platform
import subprocess
import sys
import time

from fastnn._bench import family_names, load_cases
from fastnn._bench.harness import (Budget, VerificationError, geomean, run_case, thread_settings,
                                   wait_until_idle)

__all__ = ["add_arguments", "run"]

SUBJECT = "fastnn"

FULL_BUDGET = Budget(seconds=5.0, min_rounds=5, warmup_rounds=1)
QUICK_BUDGET = Budget(seconds=1.0, min_rounds=3, warmup_rounds=0)

# A case is flagged when other processes kept at least this many CPUs busy meanwhile.
BUSY_FLAG_CPUS = 0.15

# The benchmark runs in a child process started with ISOLATION_ENV (a user's own
# setting of any of these variables is left alone), because two process-wide effects
# otherwise swamp the kernels' differences on a small machine:
#
# * Idle thread pools busy-wait before they sleep: OpenBLAS for 2**28 cycles (~0.1 s)
#   after every call, libgomp for GOMP_SPINCOUNT=300000 pauses (~10 ms). With contenders
#   interleaved on 2 cores, the pool of the one that just ran steals a core from the
#   next (measured: fastnn 1.3 ms alone, 3.8 ms right after a NumPy matmul). With the
#   short spins below, each library alone runs as fast as with the defaults (measured).
# * glibc gives large freed blocks back to the OS and page-faults them in again on the
#   next call, depending on its adaptive thresholds -- i.e. on history: torch's forward
#   on N8 C64 56x56 measured 8.5 or 15 ms (0 or 4,600 page faults per call) from run to
#   run, the NumPy baseline up to 50% slower. Fixed, high thresholds keep freed memory in
#   the heap, so every contender runs page-fault free in steady state (this makes the
#   NumPy baseline faster, i.e. the x numpy ratios conservative).
ISOLATION_ENV = {
    "OPENBLAS_THREAD_TIMEOUT": "4",
    "GOMP_SPINCOUNT": "10000",
    "MALLOC_MMAP_THRESHOLD_": "4294967296",
    "MALLOC_TRIM_THRESHOLD_": "4294967296",
}
# Unset in the child (both together, and only there): some machines set them because
# old OpenBLAS builds misbehave on their CPU; NumPy's current OpenBLAS then runs its
# Haswell kernel at half its real speed (2048^3 sgemm on 2 Zen 5 cores: 252 GFLOP/s
# with them, 444 without). The NumPy baselines are timed at NumPy's real speed.
ISOLATION_UNSET = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")
_CHILD_FLAG = "FASTNN_BENCH_CHILD"
_ARGS_VAR = "FASTNN_BENCH_ARGS"
_APPLIED_VAR = "FASTNN_BENCH_ISOLATION"
_ARGV_VAR = "FASTNN_BENCH_ARGV"


def add_arguments(parser):
    """Add the ``bench`` options to an argparse (sub)parser."""
    parser.add_argument("--quick", action="store_true",
                        help="shorter timing per case (all cases still run): about a minute")
    parser.add_argument("--only", action="append", metavar="FAMILY", default=None,
                        help="run only this family (repeatable, or a comma list); "
                             f"available: {', '.join(family_names())}")
    parser.add_argument("-k", "--filter", action="append", metavar="TEXT", default=None,
                        help="run only cases whose name contains TEXT (repeatable: any matches)")
    parser.add_argument("--json", metavar="FILE", help="write limits, environment and every timing as JSON")
    parser.add_argument("--plot", metavar="FILE.png", help="bar chart of the speed-ups (needs matplotlib)")
    parser.add_argument("--threads", type=int, metavar="N", default=None,
                        help="threads for fastnn, NumPy's BLAS and torch (default: fastnn's default)")
    parser.add_argument("--budget", type=float, metavar="SECONDS", default=None,
                        help=f"timing budget per case (default {FULL_BUDGET.seconds:g}, "
                             f"{QUICK_BUDGET.seconds:g} with --quick)")
    parser.add_argument("--no-torch", action="store_true", help="do not race PyTorch even if installed")
    parser.add_argument("--keep-going", action="store_true",
                        help="on a result mismatch, report it and go on (the exit status is still 1)")
    parser.add_argument("--wait-idle", type=float, metavar="SECONDS", default=0.0,
                        help="before each case, wait up to SECONDS for other processes to leave "
                             "the CPUs idle (for shared machines)")
    parser.add_argument("--in-process", action="store_true",
                        help="run in this process, without the child process that stops idle "
                             "BLAS/OpenMP threads from spinning (see ISOLATION_ENV in cli.py)")
    return parser


# ------------------------------------------------------------------ environment
def _cpu_model():
    """The CPU's name, with its family and model numbers (x86: Zen 4 is family 25, Zen 5 26)."""
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
                if not line.strip() and fields:
                    break
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine()
    if "cpu family" in fields:
        name += f" (cpu family {fields['cpu family']}, model {fields.get('model', '?')})"
    return name


def _loadavg():
    try:
        return os.getloadavg()
    except (AttributeError, OSError):
        return None


def environment(torch):
    """Everything needed to interpret the numbers later."""
    import numpy as np
    env = {"cpu": _cpu_model(), "platform": platform.platform(), "machine": platform.machine(),
           "python": sys.version.split()[0], "numpy": np.__version__,
           "loadavg_start": _loadavg(),
           "argv": json.loads(os.environ[_ARGV_VAR]) if _ARGV_VAR in os.environ else sys.argv}
    try:
        import scipy
        env["scipy"] = scipy.__version__
    except ImportError:
        pass
    try:
        from fastnn._config import config
        env["fastnn"] = config()
    except Exception as exc:  # a partial build must not stop the benchmark
        env["fastnn"] = {"error": f"{type(exc).__name__}: {exc}"}
    try:
        from fastnn_ext import _conv
        env["fastnn"]["ukernel_level"] = getattr(_conv, "UKERNEL_LEVEL", None)
    except Exception:
        pass
    if torch is not None:
        env["torch"] = {"version": torch.__version__, "num_threads": torch.get_num_threads(),
                        "mkldnn": bool(getattr(torch.backends, "mkldnn", None)
                                       and torch.backends.mkldnn.is_available())}
        try:
            env["torch"]["parallel_info"] = torch.__config__.parallel_info()
        except Exception:
            pass
    return env


# ------------------------------------------------------------------ formatting
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


def _header_lines(env, limits, n_threads, torch, budget, quick, isolation):
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


# ------------------------------------------------------------------ outputs
def _clean(obj):
    """JSON-safe: non-finite floats to None, tuples to lists, numpy scalars to Python."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if hasattr(obj, "item") and not isinstance(obj, (str, bytes)):
        try:
            return _clean(obj.item())
        except Exception:
            return str(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    return str(obj)


def write_json(path, doc):
    with open(path, "w") as f:
        json.dump(_clean(doc), f, indent=1)
        f.write("\n")


def write_plot(path, results_by_family, title):
    """Horizontal log-scale bars from 1x: speed-up vs NumPy and vs torch per case."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    rows = []
    many = len(results_by_family) > 1
    for fam, results in results_by_family.items():
        for r in results:
            label = f"{fam}: {r.case.name}" if many else r.case.name
            rows.append((label, r.ratios.get("vs_numpy"), r.ratios.get("vs_torch")))
        gn = geomean(r.ratios.get("vs_numpy") for r in results)
        gt = geomean(r.ratios.get("vs_torch") for r in results)
        if results:
            rows.append((f"{fam}: geomean" if many else "geomean", gn, gt))
    if not rows:
        return
    n = len(rows)
    fig = Figure(figsize=(11, 1.3 + 0.34 * n))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    h = 0.38
    ys = list(range(n))[::-1]
    values = [v for row in rows for v in row[1:] if v]
    for label, idx, color, off in (("vs NumPy", 1, "#1f77b4", h / 2), ("vs torch", 2, "#ff7f0e", -h / 2)):
        pts = [(y + off, row[idx]) for y, row in zip(ys, rows) if row[idx]]
        if not pts:
            continue
        # Bars start at 1x, so a slow-down points left and a speed-up right.
        ax.barh([p[0] for p in pts], [v - 1.0 for _, v in pts], left=1.0, height=h,
                color=color, label=label)
        for y, v in pts:
            ax.text(v * (1.03 if v >= 1 else 1 / 1.03), y, f"{v:.2f}x", va="center",
                    ha="left" if v >= 1 else "right", fontsize=7)
    ax.set_xscale("log")
    lo, hi = min(values + [1.0]), max(values + [1.0])
    ax.set_xlim(lo / 1.5, hi * 1.5)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 1.5, 2.0, 3.0, 5.0, 7.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([row[0] for row in rows], fontsize=8, family="monospace")
    ax.set_ylim(-0.7, n - 0.3)
    ax.set_xlabel("speed-up of fastnn = peer time / fastnn time (> 1: fastnn faster; log scale)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ------------------------------------------------------------------ run
def _split(values):
    out = []
    for v in values or []:
        out += [s.strip() for s in v.split(",") if s.strip()]
    return out


def _isolated_env():
    env = dict(os.environ)
    applied = {}
    for key, value in ISOLATION_ENV.items():
        if key in env:
            continue
        if key == "GOMP_SPINCOUNT" and "OMP_WAIT_POLICY" in env:
            continue
        if key.startswith("MALLOC_") and ("malloc" in env.get("GLIBC_TUNABLES", "")
                                          or any(k.startswith("MALLOC_") and k in env
                                                 for k in ISOLATION_ENV)):
            continue
        applied[key] = value
    env.update(applied)
    if any(k in env for k in ISOLATION_UNSET):
        for key in ISOLATION_UNSET:
            if key in env:
                applied[key] = f"unset (was {env.pop(key)})"
    return env, applied


def _run_child(args):
    """Re-run this benchmark in a child process with ISOLATION_ENV (the thread pools
    read it when their libraries load, which has happened in this process already)."""
    env, applied = _isolated_env()
    if not applied:
        return None
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))      # the directory holding fastnn/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env[_CHILD_FLAG] = "1"
    env[_ARGS_VAR] = json.dumps(vars(args))
    env[_APPLIED_VAR] = json.dumps(applied)
    env[_ARGV_VAR] = json.dumps(sys.argv)
    cmd = [sys.executable, "-c",
           "import sys; from fastnn._bench.cli import _child_main; sys.exit(_child_main())"]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130


def _child_main():
    args = argparse.Namespace(**json.loads(os.environ[_ARGS_VAR]))
    return _run(args, sys.stdout, json.loads(os.environ.get(_APPLIED_VAR, "{}")))


def _in_process_family(name):
    """Families that measure the default environment itself (``IN_PROCESS = True``, the
    interop family) never run in the isolation child."""
    import importlib
    try:
        module = importlib.import_module(f"fastnn._bench.cases_{name}")
    except ImportError:
        return False
    return bool(getattr(module, "IN_PROCESS", False))


def run(args, out=None):
    """Run the benchmark described by parsed ``args``; returns the exit status.

    By default the work happens in a child process (see ISOLATION_ENV); with
    ``--in-process``, when ``out`` is given, or when the variables are already set,
    it runs here. The in-process families (interop) always run here, afterwards.
    """
    only = _split(args.only)
    try:
        selected = list(dict.fromkeys(only)) if only else family_names()
        unknown = [f for f in selected if f not in family_names()]
        if unknown:
            raise KeyError(f"unknown benchmark family {unknown[0]!r}; available: "
                           f"{', '.join(family_names())}")
    except KeyError as exc:
        print(f"fastnn bench: {exc.args[0]}", file=sys.stderr)
        return 2
    inproc = [f for f in selected if _in_process_family(f)]
    rest = [f for f in selected if f not in inproc]
    status = 0
    if rest:
        sub = argparse.Namespace(**{**vars(args), "only": [",".join(rest)]})
        status = None
        if out is None and not getattr(args, "in_process", False) and os.environ.get(_CHILD_FLAG) != "1":
            status = _run_child(sub)
        if status is None:
            status = _run(sub, out or sys.stdout, {})
    if inproc and os.environ.get(_CHILD_FLAG) != "1":
        status = _run_in_process(args, inproc, out or sys.stdout) or status
    return status


def _run_in_process(args, names, out):
    """The in-process families, at the environment this process was started with."""
    import importlib
    from fastnn._bench.baselines import get_torch
    import fastnn
    torch = None if args.no_torch else get_torch()
    filters = _split(args.filter)
    results = {}
    for name in names:
        module = importlib.import_module(f"fastnn._bench.cases_{name}")
        print(f"\n[{name}] in this process, default environment ({fastnn.get_num_threads()} "
              f"threads; {module.DESCRIPTION})", file=out)
        results[name] = module.run(out, quick=args.quick, torch=torch, only_cases=filters or None)
    if args.json:
        doc = {}
        if os.path.exists(args.json):
            try:
                with open(args.json) as f:
                    doc = json.load(f)
            except (OSError, ValueError):
                doc = {}
        doc.setdefault("in_process", {}).update(results)
        write_json(args.json, doc)
        print(f"wrote {args.json}", file=out)
    return 0


def _run(args, out, isolation):
    err = sys.stderr
    t_start = time.perf_counter()
    import fastnn
    from fastnn._bench.baselines import get_torch
    from fastnn._bench.limits import measure_limits

    only = _split(args.only)
    try:
        families = load_cases(only or None)
    except KeyError as exc:
        print(f"fastnn bench: {exc.args[0]}", file=err)
        return 2
    filters = _split(args.filter)
    if filters:
        families = {f: [c for c in cs if any(t in c.name or t in c.id for t in filters)]
                    for f, cs in families.items()}
    families = {f: cs for f, cs in families.items() if cs}
    if not families:
        print("fastnn bench: no case selected", file=err)
        return 2

    n_threads = args.threads if args.threads is not None else fastnn.get_num_threads()
    if n_threads < 1:
        print("fastnn bench: --threads must be >= 1", file=err)
        return 2
    budget = QUICK_BUDGET if args.quick else FULL_BUDGET
    if args.budget is not None:
        budget = Budget(seconds=args.budget, min_rounds=budget.min_rounds,
                        warmup_rounds=budget.warmup_rounds)
    wants_torch = not args.no_torch and any(
        c.requires == "torch" for cs in families.values() for case in cs for c in case.contenders)
    torch = get_torch() if wants_torch else None

    def contenders_for(case):
        return [n for n in case.contender_names() if not (args.no_torch and n == "torch")]

    doc = {"schema": "fastnn-bench/1", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "options": {"quick": bool(args.quick), "only": only, "filter": filters,
                       "threads": n_threads, "budget_s": budget.seconds,
                       "min_rounds": budget.min_rounds, "warmup_rounds": budget.warmup_rounds,
                       "torch": torch is not None, "wait_idle_s": args.wait_idle,
                       "isolation_env": isolation},
           "families": {}, "cases": []}
    status = 0
    results_by_family = {}
    busy_cases = []
    with thread_settings(n_threads, torch):
        env = environment(torch)
        doc["environment"] = env
        limits = measure_limits(n_threads, quick=args.quick)
        doc["limits"] = limits
        for line in _header_lines(env, limits, n_threads, torch, budget, args.quick, isolation):
            print(line, file=out)
        for fam, cases in families.items():
            print(file=out)
            print(f"[{fam}] {len(cases)} cases", file=out)
            table = Table(cases, out)
            table.header()
            results = results_by_family.setdefault(fam, [])
            for case in cases:
                if args.wait_idle > 0:
                    wait_until_idle(args.wait_idle, BUSY_FLAG_CPUS)
                try:
                    r = run_case(case, budget, limits, contenders=contenders_for(case), subject=SUBJECT)
                except VerificationError as exc:
                    status = 1
                    msg = str(exc)
                    bar = "!" * 78
                    print(f"\n{bar}\nVERIFICATION FAILED -- results disagree, timings would be "
                          f"meaningless:\n  {msg}\n{bar}", file=err, flush=True)
                    doc["cases"].append({"name": case.name, "family": fam, "error": msg})
                    if not args.keep_going:
                        if args.json:
                            doc["aborted"] = msg
                            write_json(args.json, doc)
                        print("fastnn bench: aborted (use --keep-going to continue past mismatches)",
                              file=err)
                        return status
                    table.failed(case, msg.split(": ", 2)[-1][:100])
                    continue
                results.append(r)
                doc["cases"].append(r.as_dict())
                busy = r.foreign_cpus is not None and r.foreign_cpus >= BUSY_FLAG_CPUS
                if busy:
                    busy_cases.append(r)
                table.row(r, "  *" if busy else "")
            gn, gt = table.geomean(results)
            doc["families"][fam] = {"cases": len(cases), "geomean_vs_numpy": gn, "geomean_vs_torch": gt}
    if busy_cases:
        worst = max(r.foreign_cpus for r in busy_cases)
        print(f"* other processes kept up to {worst:.2f} CPUs busy during {len(busy_cases)} case(s): "
              "their times are unreliable (ratios less so); rerun on an idle machine or with "
              "--wait-idle SECONDS", file=out)
    total = time.perf_counter() - t_start
    env["loadavg_end"] = _loadavg()
    doc["total_s"] = total
    print(f"\ntotal {total:.0f} s", file=out)
    if args.json:
        write_json(args.json, doc)
        print(f"wrote {args.json}", file=out)
    if args.plot:
        try:
            write_plot(args.plot, results_by_family,
                       f"fastnn {env.get('fastnn', {}).get('version', '')} speed-ups, "
                       f"{n_threads} thread(s), {env['cpu']}")
            print(f"wrote {args.plot}", file=out)
        except ImportError as exc:
            print(f"fastnn bench: --plot needs matplotlib ({exc})", file=err)
            status = status or 1
    return status
