# Thread helpers shared by the kernels, with shims for a build without OpenMP.
cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fastnn_omp_thread_id(void) { return omp_get_thread_num(); }
    static int fastnn_omp_enabled(void) { return 1; }
    static int fastnn_omp_version(void) { return _OPENMP; }
    #else
    static int fastnn_omp_thread_id(void) { return 0; }
    static int fastnn_omp_enabled(void) { return 0; }
    static int fastnn_omp_version(void) { return 0; }
    #endif
    """
    int fastnn_omp_thread_id() noexcept nogil
    int fastnn_omp_enabled() noexcept nogil
    int fastnn_omp_version() noexcept nogil
