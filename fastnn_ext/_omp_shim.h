/* Force-included (gcc -include) into every kernel module built with -fopenmp: the
 * OpenMP entry points gcc emits for `prange` / `parallel` are defined here, hidden to
 * the module, and forwarded to fastnn's own pool in _runtime.h (loaded first, with
 * RTLD_GLOBAL, by fastnn_ext/__init__.py). The modules never link libgomp, so
 * PyTorch's libgomp and fastnn's pool do not share workers or spin settings. */
#ifndef FASTNN_OMP_SHIM_H
#define FASTNN_OMP_SHIM_H
#if defined(_OPENMP) && !defined(__GNUC__)
#error "_omp_shim.h forwards gcc's GOMP_* calls only; build without OpenMP (FASTNN_OPENMP=0)"
#endif
#ifdef _OPENMP
#include <stdbool.h>

extern void fastnn_rt_parallel(void (*fn)(void *), void *data, unsigned num_threads);
extern void fastnn_rt_barrier(void);
extern bool fastnn_rt_loop_start(long, long, long, long, long *, long *);
extern bool fastnn_rt_loop_next(long *, long *);
extern int fastnn_rt_thread_num(void);
extern int fastnn_rt_num_threads(void);
extern int fastnn_rt_max_threads(void);
extern int fastnn_rt_in_parallel(void);
extern void fastnn_rt_critical_start(void);
extern void fastnn_rt_critical_end(void);

#define FASTNN_SHIM __attribute__((visibility("hidden")))

FASTNN_SHIM void GOMP_parallel(void (*fn)(void *), void *data, unsigned num_threads,
                               unsigned flags) {
    (void)flags;
    fastnn_rt_parallel(fn, data, num_threads);
}
FASTNN_SHIM void GOMP_barrier(void) { fastnn_rt_barrier(); }
FASTNN_SHIM bool GOMP_loop_nonmonotonic_dynamic_start(long start, long end, long incr,
                                                     long chunk, long *istart, long *iend) {
    return fastnn_rt_loop_start(start, end, incr, chunk, istart, iend);
}
FASTNN_SHIM bool GOMP_loop_nonmonotonic_dynamic_next(long *istart, long *iend) {
    return fastnn_rt_loop_next(istart, iend);
}
FASTNN_SHIM bool GOMP_loop_dynamic_start(long start, long end, long incr, long chunk,
                                        long *istart, long *iend) {
    return fastnn_rt_loop_start(start, end, incr, chunk, istart, iend);
}
FASTNN_SHIM bool GOMP_loop_dynamic_next(long *istart, long *iend) {
    return fastnn_rt_loop_next(istart, iend);
}
FASTNN_SHIM void GOMP_loop_end_nowait(void) {}
FASTNN_SHIM void GOMP_loop_end(void) { fastnn_rt_barrier(); }
FASTNN_SHIM void GOMP_critical_start(void) { fastnn_rt_critical_start(); }
FASTNN_SHIM void GOMP_critical_end(void) { fastnn_rt_critical_end(); }
FASTNN_SHIM int omp_get_thread_num(void) { return fastnn_rt_thread_num(); }
FASTNN_SHIM int omp_get_num_threads(void) { return fastnn_rt_num_threads(); }
FASTNN_SHIM int omp_get_max_threads(void) { return fastnn_rt_max_threads(); }
FASTNN_SHIM int omp_in_parallel(void) { return fastnn_rt_in_parallel(); }

#endif
#endif
