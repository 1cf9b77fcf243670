/* fastnn's runtime without threads, included by _runtime.h on Windows (MSVC builds
 * are serial: FASTNN_OPENMP=0) and in FASTNN_PORTABLE_C builds (the same C on gcc, so
 * that Linux compiles and tests it). It has the entry points of the pool in
 * _runtime.h, for _runtime.pyx, _omp_shim.h and threadpoolctl, with a team of one
 * everywhere: a region runs its function once on the caller, a work-sharing loop
 * hands the caller the whole range at once, a barrier has nobody to wait for. No
 * worker is ever made, so the pool's counters stay 0; the settings are kept for
 * configure() and have no effect. Standard C plus one lock (Win32, or POSIX in the
 * portable build); the CPU counts come from _runtime.h. */
#ifndef FASTNN_RUNTIME_SERIAL_H
#define FASTNN_RUNTIME_SERIAL_H

#include <limits.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#ifdef _WIN32
/* threadpoolctl finds the limit's getter and setter among the module's exports. */
#define FRT_EXPORT __declspec(dllexport)
#else
#include <pthread.h>
#define FRT_EXPORT
#endif

#define FRT_MAX_THREADS 1024

typedef struct {
    int tid;
    int state;
} frt_slot;

/* The fields _runtime.pyx reads (stats, configure), as in the pool. */
static struct {
    int nworkers;             /* always 0 */
    int online_cpus;
    int max_threads;          /* OMP_NUM_THREADS or the CPUs, as the pool reports it */
    int limit;                /* threadpoolctl's limit, 0 = none */
    uint64_t idle_spin_ns;
    int check_contention;
    long regions, teams, shrunk, serial_busy, created, loadavg_reads;
    frt_slot slot[FRT_MAX_THREADS];
} frt_pool;

static void frt_init_once(void) {
    const char *env = getenv("OMP_NUM_THREADS");
    int omp = env && *env ? atoi(env) : 0;   /* "4,2" (nested) reads as 4 */
    frt_pool.online_cpus = frt_online_cpus();
    frt_pool.max_threads = omp > 0 ? omp : frt_available_cpus();
    if (frt_pool.max_threads > FRT_MAX_THREADS)
        frt_pool.max_threads = FRT_MAX_THREADS;
    frt_pool.idle_spin_ns = 50000u;
    frt_pool.check_contention = 1;
}

#ifdef _WIN32
static INIT_ONCE frt_once = INIT_ONCE_STATIC_INIT;
static BOOL CALLBACK frt_init_once_win(PINIT_ONCE once, PVOID arg, PVOID *context) {
    (void)once;
    (void)arg;
    (void)context;
    frt_init_once();
    return TRUE;
}
static void frt_init(void) { InitOnceExecuteOnce(&frt_once, frt_init_once_win, NULL, NULL); }
static SRWLOCK frt_critical_lock = SRWLOCK_INIT;
#define FRT_LOCK() AcquireSRWLockExclusive(&frt_critical_lock)
#define FRT_UNLOCK() ReleaseSRWLockExclusive(&frt_critical_lock)
#else
static pthread_once_t frt_once = PTHREAD_ONCE_INIT;
static void frt_init(void) { pthread_once(&frt_once, frt_init_once); }
static pthread_mutex_t frt_critical_lock = PTHREAD_MUTEX_INITIALIZER;
#define FRT_LOCK() pthread_mutex_lock(&frt_critical_lock)
#define FRT_UNLOCK() pthread_mutex_unlock(&frt_critical_lock)
#endif

/* No load is read and no team shrinks: nothing else runs "on our cores". */
static int frt_others_running(void) { return 0; }

FRT_EXPORT void fastnn_rt_parallel(void (*fn)(void *), void *data, unsigned num_threads) {
    (void)num_threads;
    fn(data);
}

FRT_EXPORT void fastnn_rt_barrier(void) {}

FRT_EXPORT bool fastnn_rt_loop_start(long start, long end, long incr, long chunk,
                                     long *istart, long *iend) {
    (void)chunk;
    *istart = start;
    *iend = end;
    return incr > 0 ? start < end : start > end;
}

FRT_EXPORT bool fastnn_rt_loop_next(long *istart, long *iend) {
    (void)istart;
    (void)iend;
    return false;
}

FRT_EXPORT int fastnn_rt_thread_num(void) { return 0; }
FRT_EXPORT int fastnn_rt_num_threads(void) { return 1; }
FRT_EXPORT int fastnn_rt_team_size(int n) { (void)n; return 1; }
FRT_EXPORT int fastnn_rt_in_parallel(void) { return 0; }

FRT_EXPORT int fastnn_rt_max_threads(void) {
    frt_init();
    int limit = frt_pool.limit;
    return limit > 0 && limit < frt_pool.max_threads ? limit : frt_pool.max_threads;
}

/* Two Python threads may run kernels at once: a critical section still excludes. */
FRT_EXPORT void fastnn_rt_critical_start(void) { FRT_LOCK(); }
FRT_EXPORT void fastnn_rt_critical_end(void) { FRT_UNLOCK(); }

/* threadpoolctl's controller (fastnn._threads) sets and reads the limit here, with
 * the GIL held. */
FRT_EXPORT int fastnn_rt_get_limit(void) { return frt_pool.limit; }
FRT_EXPORT void fastnn_rt_set_limit(int n) { frt_pool.limit = n > 0 ? n : 0; }

FRT_EXPORT int fastnn_rt_available_cpus(void) { return frt_available_cpus(); }

/* OpenBLAS's jobs of one call wait for each other, so they need threads of their
 * own: without a pool there is nothing to lend them. fastnn.set_coexistence reads
 * the NULL as "not available" and routes nothing. */
FRT_EXPORT void *fastnn_rt_openblas_callback_address(void) { return NULL; }

#endif
