"""``python -m fastnn bench``: race fastnn against NumPy (and PyTorch) on default shapes.

Prints, per benchmark family, one row per case -- median milliseconds of each
contender, speed-ups (``x numpy`` = NumPy time / fastnn time, so > 1 means fastnn is
faster), fastnn's GFLOP/s (or GB/s for memory-bound cases) and that rate as a
percentage of the machine's ceiling measured at start -- and a geometric-mean line.
"""
import argparse
import json
import os
import sys
import time

from fastnn._bench import family_names, load_cases
from fastnn._bench.child import CHILD_FLAG, ISOLATION_ENV, ISOLATION_UNSET, run_child  # noqa: F401
from fastnn._bench.harness import (Budget, VerificationError, run_case, thread_settings,
                                   wait_until_idle)
from fastnn._bench.plot import write_plot
from fastnn._bench.report import environment, loadavg, write_json
from fastnn._bench.tables import BUSY_FLAG_CPUS, Table, header_lines

__all__ = ["add_arguments", "run", "run_isolated"]

SUBJECT = "fastnn"

FULL_BUDGET = Budget(seconds=5.0, min_rounds=5, warmup_rounds=1)
QUICK_BUDGET = Budget(seconds=1.0, min_rounds=3, warmup_rounds=0)

# The isolation child (ISOLATION_ENV, ISOLATION_UNSET and why) is in child.py; the
# table and header in tables.py, the --json record in report.py, --plot in plot.py.


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


# ------------------------------------------------------------------ run
def _split(values):
    out = []
    for v in values or []:
        out += [s.strip() for s in v.split(",") if s.strip()]
    return out


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
        if out is None and not getattr(args, "in_process", False) and os.environ.get(CHILD_FLAG) != "1":
            status = run_child(sub)
        if status is None:
            status = run_isolated(sub, out or sys.stdout, {})
    if inproc and os.environ.get(CHILD_FLAG) != "1":
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


def _select(args, err):
    """The families and cases ``--only`` and ``-k`` select, or an exit status."""
    try:
        families = load_cases(_split(args.only) or None)
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
    return families


def _budget(args):
    budget = QUICK_BUDGET if args.quick else FULL_BUDGET
    if args.budget is not None:
        budget = Budget(seconds=args.budget, min_rounds=budget.min_rounds,
                        warmup_rounds=budget.warmup_rounds)
    return budget


def _new_doc(args, n_threads, budget, torch, isolation):
    return {"schema": "fastnn-bench/1", "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "options": {"quick": bool(args.quick), "only": _split(args.only),
                        "filter": _split(args.filter), "threads": n_threads,
                        "budget_s": budget.seconds, "min_rounds": budget.min_rounds,
                        "warmup_rounds": budget.warmup_rounds, "torch": torch is not None,
                        "wait_idle_s": args.wait_idle, "isolation_env": isolation},
            "families": {}, "cases": []}


class _Aborted(Exception):
    """A result mismatch without --keep-going."""


def _run_family(args, fam, cases, budget, limits, doc, out, err):
    """Time one family's cases, printing its table; returns (results, busy results,
    whether a case failed verification)."""
    print(file=out)
    print(f"[{fam}] {len(cases)} cases", file=out)
    table = Table(cases, out)
    table.header()
    results, busy_cases, failed = [], [], False
    for case in cases:
        if args.wait_idle > 0:
            wait_until_idle(args.wait_idle, BUSY_FLAG_CPUS)
        contenders = [n for n in case.contender_names() if not (args.no_torch and n == "torch")]
        try:
            r = run_case(case, budget, limits, contenders=contenders, subject=SUBJECT)
        except VerificationError as exc:
            failed = True
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
                raise _Aborted from None
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
    return results, busy_cases, failed


def _finish(args, doc, env, results_by_family, busy_cases, n_threads, t_start, out, err):
    """The closing lines, --json and --plot; returns 1 when the plot could not be made."""
    if busy_cases:
        worst = max(r.foreign_cpus for r in busy_cases)
        print(f"* other processes kept up to {worst:.2f} CPUs busy during {len(busy_cases)} case(s): "
              "their times are unreliable (ratios less so); rerun on an idle machine or with "
              "--wait-idle SECONDS", file=out)
    total = time.perf_counter() - t_start
    env["loadavg_end"] = loadavg()
    doc["total_s"] = total
    print(f"\ntotal {total:.0f} s", file=out)
    if args.json:
        write_json(args.json, doc)
        print(f"wrote {args.json}", file=out)
    if args.plot:
        try:
            families = ", ".join(results_by_family)
            write_plot(args.plot, results_by_family,
                       f"fastnn {env.get('fastnn', {}).get('version', '')} speed-ups "
                       f"({families}{'; --quick' if args.quick else ''}), "
                       f"{n_threads} thread(s), {env['cpu']}",
                       busy=lambda r: r.foreign_cpus is not None
                       and r.foreign_cpus >= BUSY_FLAG_CPUS)
            print(f"wrote {args.plot}", file=out)
        except ImportError as exc:
            print(f"fastnn bench: --plot needs matplotlib ({exc})", file=err)
            return 1
    return 0


def run_isolated(args, out, isolation):
    """Run the selected (isolated) families here; ``isolation`` is the environment the
    child was given ({} in-process). Returns the exit status."""
    err = sys.stderr
    t_start = time.perf_counter()
    import fastnn
    from fastnn._bench.baselines import get_torch
    from fastnn._bench.limits import measure_limits

    families = _select(args, err)
    if not isinstance(families, dict):
        return families
    n_threads = args.threads if args.threads is not None else fastnn.get_num_threads()
    if n_threads < 1:
        print("fastnn bench: --threads must be >= 1", file=err)
        return 2
    budget = _budget(args)
    wants_torch = not args.no_torch and any(
        c.requires == "torch" for cs in families.values() for case in cs for c in case.contenders)
    torch = get_torch() if wants_torch else None
    doc = _new_doc(args, n_threads, budget, torch, isolation)
    status = 0
    results_by_family, busy_cases = {}, []
    with thread_settings(n_threads, torch):
        env = doc["environment"] = environment(torch)
        limits = doc["limits"] = measure_limits(n_threads, quick=args.quick)
        for line in header_lines(env, limits, n_threads, torch, budget, args.quick, isolation):
            print(line, file=out)
        for fam, cases in families.items():
            try:
                results, busy, failed = _run_family(args, fam, cases, budget, limits, doc, out, err)
            except _Aborted:
                return 1
            results_by_family[fam] = results
            busy_cases += busy
            status = 1 if failed else status
    return _finish(args, doc, env, results_by_family, busy_cases, n_threads, t_start,
                   out, err) or status
