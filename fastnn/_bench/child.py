"""The isolation child of ``python -m fastnn bench``: the benchmark re-run in a fresh
interpreter whose thread pools and allocator start with ISOLATION_ENV."""
import argparse
import json
import os
import subprocess
import sys

__all__ = ["ISOLATION_ENV", "ISOLATION_UNSET", "CHILD_FLAG", "ARGV_VAR", "run_child",
           "child_main"]

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
CHILD_FLAG = "FASTNN_BENCH_CHILD"
_ARGS_VAR = "FASTNN_BENCH_ARGS"
_APPLIED_VAR = "FASTNN_BENCH_ISOLATION"
ARGV_VAR = "FASTNN_BENCH_ARGV"


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


def run_child(args):
    """Re-run this benchmark in a child process with ISOLATION_ENV (the thread pools
    read it when their libraries load, which has happened in this process already)."""
    env, applied = _isolated_env()
    if not applied:
        return None
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))      # the directory holding fastnn/
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    env[CHILD_FLAG] = "1"
    env[_ARGS_VAR] = json.dumps(vars(args))
    env[_APPLIED_VAR] = json.dumps(applied)
    env[ARGV_VAR] = json.dumps(sys.argv)
    cmd = [sys.executable, "-c",
           "import sys; from fastnn._bench.child import child_main; sys.exit(child_main())"]
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        return subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        return 130


def child_main():
    """The child's entry point: the parent's options, run here with its isolation."""
    from fastnn._bench.cli import run_isolated
    args = argparse.Namespace(**json.loads(os.environ[_ARGS_VAR]))
    return run_isolated(args, sys.stdout, json.loads(os.environ.get(_APPLIED_VAR, "{}")))
