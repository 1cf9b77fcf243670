"""``python -m fastnn bench``: race fastnn against NumPy (and PyTorch) on default shapes.

Prints, per benchmark family, one row per case -- median milliseconds of each
contender, speed-ups (``x numpy`` = NumPy time / fastnn time, so > 1 means fastnn is
faster), fastnn's GFLOP/s (or GB/s for memory-bound cases) and that rate as a
percentage of the machine's ceiling measured at start -- and a geometric-mean line.
"""
import json
import math
import os
import platform
import sys
import time

from fastnn._bench import family_names, load_cases
from fastnn._bench.harness import Budget, VerificationError, geomean, run_case, thread_settings

__all__ = ["add_arguments", "run"]

SUBJECT = "fastnn"
PEERS = ("numpy", "torch")

FULL_BUDGET = Budget(seconds=5.0, min_rounds=5, warmup_rounds=1)
QUICK_BUDGET = Budget(seconds=1.0, min_rounds=3, warmup_rounds=0)


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
    return parser


# ------------------------------------------------------------------ environment
def _cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


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
           "loadavg_start": _loadavg(), "argv": sys.argv}
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

    def _line(self, first, cells):
        parts = [first.ljust(self.w_case)]
        parts.append(cells[0].ljust(self.widths[0]))
        parts += [c.rjust(w) for c, w in zip(cells[1:], self.widths[1:])]
        print("  ".join(parts).rstrip(), file=self.out, flush=True)

    def header(self):
        self._line("case", self.heads)
        print("-" * (self.w_case + sum(self.widths) + 2 * len(self.widths)), file=self.out)

    def row(self, r):
        rate = _num(r.rate, ".1f")
        if self.rate_head == "rate" and r.rate is not None:
            rate = f"{r.rate:.1f} {'GF/s' if r.rate_unit == 'GFLOP/s' else 'GB/s'}"
        self._line(r.case.name, [r.case.dtype, _ms(r.median_ms("fastnn")), _ms(r.median_ms("numpy")),
                                 _ms(r.median_ms("torch")), _num(r.ratios.get("vs_numpy"), ".2f"),
                                 _num(r.ratios.get("vs_torch"), ".2f"), rate,
                                 _num(r.pct_limit, ".1f")])

    def failed(self, case, message):
        self._line(case.name, [case.dtype, "MISMATCH: " + message])

    def geomean(self, results):
        gn = geomean(r.ratios.get("vs_numpy") for r in results)
        gt = geomean(r.ratios.get("vs_torch") for r in results)
        print("-" * (self.w_case + sum(self.widths) + 2 * len(self.widths)), file=self.out)
        self._line("geomean", ["", "", "", "", _num(gn, ".2f"), _num(gt, ".2f"), "", ""])
        return gn, gt


def _header_lines(env, limits, n_threads, torch, budget, quick):
    fn = env.get("fastnn", {})
    lines = [f"fastnn bench -- fastnn {fn.get('version', '?')}, {n_threads} thread(s) for fastnn, "
             f"NumPy's BLAS{' and torch' if torch is not None else ''}"
             f"{' (quick)' if quick else ''}"]
    load = env.get("loadavg_start")
    lines.append(f"machine : {env['cpu']}, {os.cpu_count()} CPUs ({fn.get('cpus_available', '?')} "
                 f"available), {env['platform']}"
                 + (f", load average {load[0]:.2f}" if load else ""))
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
    lines.append(f"timing  : contenders interleaved round by round, ~{budget.seconds:g} s per case, "
                 f">= {budget.min_rounds} rounds; ms = median; x numpy / x torch = peer time / fastnn "
                 f"time (> 1: fastnn faster), median of per-round ratios; % limit = fastnn's rate / "
                 f"GEMM ceiling (copy ceiling for GB/s)")
    if load and load[0] > 0.5 * (os.cpu_count() or 1):
        lines.append(f"WARNING : load average {load[0]:.2f} -- other processes are using the CPUs; "
                     "absolute times will be noisy (ratios less so: contenders are interleaved)")
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
    """Horizontal log-scale bars: speed-up vs NumPy and vs torch per case."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = []
    many = len(results_by_family) > 1
    for fam, results in results_by_family.items():
        for r in results:
            label = f"{fam}: {r.case.name}" if many else r.case.name
            rows.append((label, r.ratios.get("vs_numpy"), r.ratios.get("vs_torch")))
    if not rows:
        return
    n = len(rows)
    fig = Figure(figsize=(11, 1.2 + 0.32 * n))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    h = 0.38
    ys = list(range(n))[::-1]
    series = [("vs NumPy", 1, "#1f77b4", -h / 2), ("vs torch", 2, "#ff7f0e", h / 2)]
    values = [v for row in rows for v in row[1:] if v]
    for label, idx, color, off in series:
        vals = [row[idx] for row in rows]
        if not any(vals):
            continue
        ax.barh([y - off for y in ys], [v if v else 0 for v in vals], height=h, left=0,
                color=color, label=label)
        for y, v in zip(ys, vals):
            if v:
                ax.text(v * 1.03, y - off, f"{v:.2f}x", va="center", fontsize=7)
    ax.set_xscale("log")
    lo, hi = min(values + [1.0]), max(values + [1.0])
    ax.set_xlim(lo / 1.6, hi * 1.8)
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_yticks(ys)
    ax.set_yticklabels([row[0] for row in rows], fontsize=8, family="monospace")
    ax.set_xlabel("speed-up of fastnn (peer time / fastnn time; > 1: fastnn faster, log scale)")
    ax.set_title(title, fontsize=9)
    ax.grid(axis="x", which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


# ------------------------------------------------------------------ run
def _split(values):
    out = []
    for v in values or []:
        out += [s.strip() for s in v.split(",") if s.strip()]
    return out


def run(args, out=None):
    """Run the benchmark described by parsed ``args``; returns the exit status."""
    out = out or sys.stdout
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
    contenders_for = (lambda case: [n for n in case.contender_names() if n != "torch"]) \
        if args.no_torch else (lambda case: case.contender_names())

    doc = {"schema": "fastnn-bench/1", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "options": {"quick": bool(args.quick), "only": only, "filter": filters,
                       "threads": n_threads, "budget_s": budget.seconds,
                       "min_rounds": budget.min_rounds, "warmup_rounds": budget.warmup_rounds,
                       "torch": torch is not None},
           "families": {}, "cases": []}
    status = 0
    results_by_family = {}
    with thread_settings(n_threads, torch):
        env = environment(torch)
        doc["environment"] = env
        limits = measure_limits(n_threads, quick=args.quick)
        doc["limits"] = limits
        for line in _header_lines(env, limits, n_threads, torch, budget, args.quick):
            print(line, file=out)
        for fam, cases in families.items():
            print(file=out)
            print(f"[{fam}] {len(cases)} cases", file=out)
            table = Table(cases, out)
            table.header()
            results = results_by_family.setdefault(fam, [])
            for case in cases:
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
                    table.failed(case, msg.split(": ", 1)[-1][:60])
                    continue
                results.append(r)
                doc["cases"].append(r.as_dict())
                table.row(r)
            gn, gt = table.geomean(results)
            doc["families"][fam] = {"cases": len(cases), "geomean_vs_numpy": gn, "geomean_vs_torch": gt}
            noisy = [r for r in results
                     if (r.timings[SUBJECT]["q3_s"] - r.timings[SUBJECT]["q1_s"])
                     > 0.10 * r.timings[SUBJECT]["median_s"]]
            if noisy:
                print(f"noisy (fastnn's interquartile range > 10% of its median): "
                      f"{', '.join(r.case.name for r in noisy)}", file=out)
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
