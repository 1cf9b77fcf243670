# cython: language_level=3
"""fastnn's thread pool (C in _runtime.h): statistics and settings for fastnn._threads.

This module is loaded with RTLD_GLOBAL before any kernel module (fastnn_ext/__init__.py):
the kernel modules' OpenMP entry points (_omp_shim.h) resolve ``fastnn_rt_*`` here.
"""

from fastnn_ext._cost cimport (FASTNN_SERIAL_BELOW_CONV, FASTNN_SERIAL_BELOW_ELEMENTWISE,
                              FASTNN_SERIAL_BELOW_EXP, FASTNN_SERIAL_BELOW_GATE,
                              FASTNN_SERIAL_BELOW_MAC, FASTNN_SERIAL_BELOW_POOL,
                              FASTNN_SERIAL_BELOW_RECURRENT)

#: The cost model (``_cost.h``): below these amounts of work a call runs serially.
SERIAL_BELOW = {
    "elementwise": FASTNN_SERIAL_BELOW_ELEMENTWISE,
    "exp": FASTNN_SERIAL_BELOW_EXP,
    "mac": FASTNN_SERIAL_BELOW_MAC,
    "gate": FASTNN_SERIAL_BELOW_GATE,
    "recurrent": FASTNN_SERIAL_BELOW_RECURRENT,
    "pool": FASTNN_SERIAL_BELOW_POOL,
    "conv": FASTNN_SERIAL_BELOW_CONV,
}

cdef extern from "_runtime.h" nogil:
    void frt_init()
    int fastnn_rt_get_limit()
    void fastnn_rt_set_limit(int n)
    int fastnn_rt_max_threads()
    ctypedef struct frt_slot_t "frt_slot":
        int tid
        int state
    ctypedef struct frt_pool_t:
        int nworkers
        int online_cpus
        int max_threads
        unsigned long long idle_spin_ns
        int check_contention
        long regions
        long teams
        long shrunk
        long serial_busy
        long created
        long loadavg_reads
        frt_slot_t slot[1024]
    frt_pool_t frt_pool
    int frt_others_running()
    int fastnn_rt_available_cpus()
    void* fastnn_rt_openblas_callback_address()


def get_limit():
    """The limit threadpoolctl set (0 = none)."""
    return fastnn_rt_get_limit()


def set_limit(int n):
    """Cap every team at n threads (0 removes the cap); threadpoolctl's setter."""
    fastnn_rt_set_limit(n)


def max_threads():
    """The pool's default team size: OMP_NUM_THREADS at load, else the CPUs, capped by the limit."""
    return fastnn_rt_max_threads()


def configure(idle_spin_us=None, check_contention=None):
    """Set how long idle workers spin (microseconds) and whether teams shrink when
    other tasks hold the cores. Returns the previous settings as a dict."""
    frt_init()
    old = {"idle_spin_us": frt_pool.idle_spin_ns // 1000,
           "check_contention": bool(frt_pool.check_contention)}
    if idle_spin_us is not None:
        frt_pool.idle_spin_ns = <unsigned long long>idle_spin_us * 1000
    if check_contention is not None:
        frt_pool.check_contention = 1 if check_contention else 0
    return old


def stats():
    """Counters and state of the pool (for tests, show_config and the benchmark)."""
    frt_init()
    return {
        "workers": frt_pool.nworkers,
        "worker_tids": [frt_pool.slot[i].tid for i in range(1, frt_pool.nworkers + 1)],
        "online_cpus": frt_pool.online_cpus,
        "max_threads": frt_pool.max_threads,
        "idle_spin_us": frt_pool.idle_spin_ns // 1000,
        "check_contention": bool(frt_pool.check_contention),
        "regions": frt_pool.regions,
        "teams": frt_pool.teams,
        "shrunk": frt_pool.shrunk,
        "serial_busy": frt_pool.serial_busy,
        "threads_created": frt_pool.created,
        "loadavg_reads": frt_pool.loadavg_reads,
    }


def others_running():
    """Tasks running on the machine besides the caller and the pool's spinning workers."""
    frt_init()
    return frt_others_running()


def available_cpus():
    """CPUs this process may run on (sched_getaffinity, re-read once per coarse-clock tick)."""
    return fastnn_rt_available_cpus()


def openblas_callback_address():
    """Address of the OpenBLAS threads callback that runs OpenBLAS's jobs on this pool."""
    return <size_t>fastnn_rt_openblas_callback_address()
