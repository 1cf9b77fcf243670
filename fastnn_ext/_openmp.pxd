# Thread helpers shared by the kernels, with shims for a build without OpenMP.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    extern int fastnn_rt_team_size(int n);   /* fastnn's pool, _runtime.h */
    static int fastnn_team_would_get(int n) { return fastnn_rt_team_size(n); }
    static int fastnn_omp_thread_id(void) { return omp_get_thread_num(); }
    static int fastnn_omp_enabled(void) { return 1; }
    static int fastnn_omp_version(void) { return _OPENMP; }
    #else
    static int fastnn_team_would_get(int n) { (void)n; return 1; }
    static int fastnn_omp_thread_id(void) { return 0; }
    static int fastnn_omp_enabled(void) { return 0; }
    static int fastnn_omp_version(void) { return 0; }
    #endif
    """
    int fastnn_omp_thread_id() noexcept nogil
    # The team a region asked for n threads would get now (a hint; see _runtime.h).
    int fastnn_team_would_get(int n) noexcept nogil
    int fastnn_omp_enabled() noexcept nogil
    int fastnn_omp_version() noexcept nogil


cdef inline int team(int num_threads, Py_ssize_t items) noexcept nogil:
    # No team larger than its work items (a thread with nothing to do still costs a
    # wake-up, and 100000 of them exhaust the process).
    if items < 1:
        return 1
    return num_threads if num_threads <= items else <int>items
