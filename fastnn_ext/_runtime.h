/* fastnn's thread pool: the OpenMP entry points gcc emits for the kernels' prange
 * loops (GOMP_parallel, GOMP_barrier, the dynamic loop calls, omp_get_thread_num ...)
 * are forwarded here by _omp_shim.h, so the kernels never use libgomp's pool.
 *
 * Why not libgomp: it is one process-wide instance shared with PyTorch (both load
 * "libgomp.so.1"), its idle workers busy-wait GOMP_SPINCOUNT (300000 pauses, about
 * 8 ms on this Zen 5) after every region, and the spin count is read only from the
 * environment when the library loads. A NumPy matmul right after a fastnn kernel then
 * shares a core with a spinning fastnn worker. This pool
 *
 *  - lets an idle worker spin only `idle_spin_ns` (default 50 us: long enough for
 *    back-to-back kernel calls from Python, short next to a NumPy call), then sleep
 *    on a futex;
 *  - before a region, reads how many tasks are running on the machine
 *    (/proc/loadavg, ~1.3 us; reused as frt_others_running says) and shrinks the
 *    team to the cores that are free, so a kernel called while another library's
 *    workers still spin runs serially instead of waiting for a core at every barrier;
 *  - re-creates itself in a forked child (pthread_atfork), so a child can run
 *    parallel kernels;
 *  - runs one team at a time: a second Python thread calling a kernel meanwhile gets a
 *    team of one (no oversubscription, same bits);
 *  - blocks signals in its workers, so Ctrl-C is delivered to a Python thread.
 *
 * Results never depend on the team size: every kernel splits its work by shape.
 */
#ifndef FASTNN_RUNTIME_H
#define FASTNN_RUNTIME_H

#ifdef _WIN32
#ifndef WIN32_LEAN_AND_MEAN
#define WIN32_LEAN_AND_MEAN
#endif
#include <windows.h>
#else
#include <sched.h>
#include <unistd.h>
#endif

/* The CPUs online, and those this process may run on (both runtimes below). */
static int frt_online_cpus(void) {
#ifdef _WIN32
    DWORD n = GetActiveProcessorCount(ALL_PROCESSOR_GROUPS);
#else
    long n = sysconf(_SC_NPROCESSORS_ONLN);
#endif
    return n > 0 ? (int)n : 1;
}

static int frt_available_cpus(void) {
#ifdef _WIN32
    /* An affinity mask covers one processor group: used only where there is one. */
    DWORD_PTR process_mask, system_mask;
    if (GetActiveProcessorGroupCount() == 1 &&
        GetProcessAffinityMask(GetCurrentProcess(), &process_mask, &system_mask)) {
        int n = 0;
        for (; process_mask; process_mask &= process_mask - 1)
            n++;
        if (n > 0)
            return n;
    }
#elif defined(__linux__)
    cpu_set_t set;
    if (sched_getaffinity(0, sizeof(set), &set) == 0) {
        int n = CPU_COUNT(&set);
        if (n > 0)
            return n;
    }
#endif
    return frt_online_cpus();
}

#if defined(_WIN32) || defined(FASTNN_PORTABLE_C)
/* Windows builds (serial: no OpenMP, see pyproject.toml) and FASTNN_PORTABLE_C
 * builds, which compile on gcc what MSVC compiles: the same entry points without
 * threads. */
#include "_runtime_serial.h"
#else

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#define FRT_EXPORT __attribute__((visibility("default")))
#define FRT_MAX_THREADS 1024
#define FRT_WS_SLOTS 8
#define FRT_LINE 64

enum { FRT_RUNNING = 0, FRT_SPINNING = 1, FRT_SLEEPING = 2 };

/* ---- waiting: spin for a while, then sleep ----------------------------------- */

static inline uint64_t frt_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static inline void frt_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

#ifdef __linux__
static void frt_futex_wait(atomic_uint *addr, unsigned expected) {
    syscall(SYS_futex, (unsigned *)addr, FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
}
static void frt_futex_wake(atomic_uint *addr, int count) {
    syscall(SYS_futex, (unsigned *)addr, FUTEX_WAKE_PRIVATE, count, NULL, NULL, 0);
}
#else
/* Portable fallback: a short sleep instead of a futex (correct, slower to wake). */
static void frt_futex_wait(atomic_uint *addr, unsigned expected) {
    if (atomic_load(addr) == expected) {
        struct timespec ts = {0, 20000};
        nanosleep(&ts, NULL);
    }
}
static void frt_futex_wake(atomic_uint *addr, int count) { (void)addr; (void)count; }
#endif

/* Wait until *word != seen: spin up to spin_ns, then sleep. *state (if given) says
 * which phase the waiter is in, for the waker and for the contention count, and
 * *dozed (with it) when it last stopped spinning. */
static unsigned frt_wait_change(atomic_uint *word, unsigned seen, uint64_t spin_ns,
                                atomic_int *state, atomic_int *sleepers,
                                _Atomic uint64_t *dozed) {
    unsigned v = atomic_load_explicit(word, memory_order_acquire);
    if (v != seen)
        return v;
    if (state)
        atomic_store(state, FRT_SPINNING);
    if (spin_ns) {
        uint64_t start = frt_now_ns();
        for (unsigned i = 1;; i++) {
            frt_relax();
            v = atomic_load_explicit(word, memory_order_acquire);
            if (v != seen)
                goto done;
            if ((i & 63) == 0 && frt_now_ns() - start > spin_ns)
                break;
        }
    }
    if (state) {
        if (dozed)
            atomic_store_explicit(dozed, frt_now_ns(), memory_order_relaxed);
        atomic_store(state, FRT_SLEEPING);
    }
    if (sleepers)
        atomic_fetch_add(sleepers, 1);
    while ((v = atomic_load(word)) == seen)
        frt_futex_wait(word, seen);
    if (sleepers)
        atomic_fetch_sub(sleepers, 1);
done:
    if (state)
        atomic_store(state, FRT_RUNNING);
    return v;
}

/* ---- teams ------------------------------------------------------------------ */

typedef struct {
    _Atomic long id;          /* which work-share of the region uses the slot */
    _Atomic long next;        /* next iteration to hand out */
    long end, incr, chunk;
    atomic_int lock;
    char pad[FRT_LINE];
} frt_ws;

typedef struct {
    void (*fn)(void *);
    void *data;
    int nthreads;
    char pad0[FRT_LINE];
    atomic_uint pending;      /* workers still inside fn; the master sleeps on it */
    atomic_int pending_sleepers;
    char pad1[FRT_LINE];
    atomic_int bar_count;
    atomic_uint bar_gen;
    atomic_int bar_sleepers;
    char pad2[FRT_LINE];
    frt_ws ws[FRT_WS_SLOTS];
} frt_team;

typedef struct {
    atomic_uint gen;          /* bumped by the master to hand the worker a region */
    atomic_int state;
    _Atomic uint64_t dozed;   /* when the worker last stopped spinning to sleep */
    pid_t tid;
    char pad[FRT_LINE];
} frt_slot;

static struct {
    pthread_mutex_t busy;     /* held by the master of the running team */
    pthread_mutex_t create;   /* worker creation */
    int nworkers;             /* workers 1..nworkers exist */
    int online_cpus;
    int max_threads;          /* default team size (OMP_NUM_THREADS or the CPUs) */
    atomic_int limit;         /* threadpoolctl's limit, 0 = none */
    uint64_t idle_spin_ns, team_spin_ns;
    int check_contention;
    int loadavg_fd;
    uint64_t loadavg_at;      /* last read, ns (see frt_others_running) */
    int loadavg_others;       /* the other tasks it saw */
    uint64_t loadavg_held_at; /* first of the reads since that all saw others, 0 = none */
    _Atomic uint64_t last_end_ns;   /* when the last checked region ended */
    frt_team team;
    frt_slot slot[FRT_MAX_THREADS];
    pthread_t thread[FRT_MAX_THREADS];
    /* statistics, for tests and the benchmark */
    atomic_long regions, teams, shrunk, serial_busy, created, loadavg_reads;
    int initialised;
} frt_pool;

static __thread frt_team *frt_tls_team;
static __thread int frt_tls_tid;
static __thread long frt_tls_ws;

static int frt_env_int(const char *name, int fallback) {
    const char *s = getenv(name);
    if (!s || !*s)
        return fallback;
    char *end;
    long v = strtol(s, &end, 10);
    if (end == s || v < 0 || v > INT_MAX)
        return fallback;
    return (int)v;
}

static void frt_reset_state(void) {
    pthread_mutex_init(&frt_pool.busy, NULL);
    pthread_mutex_init(&frt_pool.create, NULL);
    frt_pool.nworkers = 0;
    memset(frt_pool.slot, 0, sizeof(frt_pool.slot));
    memset(&frt_pool.team, 0, sizeof(frt_pool.team));
    frt_pool.loadavg_at = 0;
    frt_pool.loadavg_held_at = 0;
    atomic_store(&frt_pool.last_end_ns, 0);
    frt_tls_team = NULL;
    frt_tls_tid = 0;
}

/* In a forked child only the forking thread exists: forget the workers (their
 * memory is there, their threads are not) and start over on the next region. */
static void frt_after_fork_child(void) { frt_reset_state(); }

static void frt_init_once(void) {
    frt_reset_state();
    frt_pool.online_cpus = frt_online_cpus();
    int omp = 0;
    const char *env = getenv("OMP_NUM_THREADS");
    if (env && *env)
        omp = atoi(env);   /* "4,2" (nested) reads as 4 */
    frt_pool.max_threads = omp > 0 ? omp : frt_available_cpus();
    if (frt_pool.max_threads > FRT_MAX_THREADS)
        frt_pool.max_threads = FRT_MAX_THREADS;
    /* OMP_WAIT_POLICY is honoured: passive = sleep at once, active = spin 100 ms. */
    int idle_us = 50;
    const char *policy = getenv("OMP_WAIT_POLICY");
    if (policy && (policy[0] == 'p' || policy[0] == 'P'))
        idle_us = 0;
    else if (policy && (policy[0] == 'a' || policy[0] == 'A'))
        idle_us = 100000;
    idle_us = frt_env_int("FASTNN_SPIN_US", idle_us);
    frt_pool.idle_spin_ns = (uint64_t)idle_us * 1000u;
    /* Inside a region every thread is working: wait longer before sleeping. */
    frt_pool.team_spin_ns = 2000000u;
    frt_pool.check_contention = frt_env_int("FASTNN_CONTENTION", 1) != 0;
    frt_pool.loadavg_fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
    pthread_atfork(NULL, NULL, frt_after_fork_child);
    frt_pool.initialised = 1;
}

static pthread_once_t frt_once = PTHREAD_ONCE_INIT;
static inline void frt_init(void) {
    if (!frt_pool.initialised)
        pthread_once(&frt_once, frt_init_once);
}

static void *frt_worker(void *arg) {
    int idx = (int)(intptr_t)arg;
    frt_slot *slot = &frt_pool.slot[idx];
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
#ifdef __linux__
    slot->tid = (pid_t)syscall(SYS_gettid);
    char name[16];
    snprintf(name, sizeof(name), "fastnn-%d", idx);
    pthread_setname_np(pthread_self(), name);
#endif
    unsigned seen = 0;   /* the slot's gen is 0 when the worker is created */
    for (;;) {
        seen = frt_wait_change(&slot->gen, seen, frt_pool.idle_spin_ns, &slot->state, NULL,
                               &slot->dozed);
        frt_team *t = &frt_pool.team;
        frt_tls_team = t;
        frt_tls_tid = idx;
        frt_tls_ws = 0;
        t->fn(t->data);
        frt_tls_team = NULL;
        if (atomic_fetch_sub(&t->pending, 1) == 1 && atomic_load(&t->pending_sleepers))
            frt_futex_wake(&t->pending, 1);
    }
    return NULL;
}

/* Workers 1..n-1 exist afterwards, or as many as could be created. */
static int frt_ensure_workers(int n) {
    int want = n - 1;
    if (frt_pool.nworkers >= want)
        return n;
    pthread_mutex_lock(&frt_pool.create);
    while (frt_pool.nworkers < want) {
        int idx = frt_pool.nworkers + 1;
        atomic_store(&frt_pool.slot[idx].gen, 0);
        atomic_store(&frt_pool.slot[idx].state, FRT_RUNNING);
        atomic_store(&frt_pool.slot[idx].dozed, 0);
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        int rc = pthread_create(&frt_pool.thread[idx], &attr, frt_worker, (void *)(intptr_t)idx);
        pthread_attr_destroy(&attr);
        if (rc != 0)
            break;
        frt_pool.nworkers = idx;
        atomic_fetch_add(&frt_pool.created, 1);
    }
    int have = frt_pool.nworkers + 1;
    pthread_mutex_unlock(&frt_pool.create);
    return have < n ? have : n;
}

/* How long one reading of /proc/loadavg is reused. The read is a system call, and on
 * the 2-vCPU Zen 5 VM a system call made right after a NumPy matmul (whose OpenBLAS
 * workers then spin) slowed the kernel that followed by much more than the call's own
 * ~3 us: relu_backward 2^20 on one thread 10-15 us, lstm_cell B16 I128 H256 8 us (the
 * same for getppid()). Another library's busy-waiting workers hold a core for 8-100 ms
 * after its last call, so a reading that found the cores held is kept a quarter of
 * the time the reads have found them held without a break (from 0.5 ms of that on; at
 * most 10 ms): "NumPy call, fastnn kernel" over and over then pays the read about once
 * in 10 ms instead of every call, and once the machine is free again a kernel runs
 * serially for at most a quarter of the held spell longer (the SPEC's floor: never
 * slower than one thread). A free machine is re-read after 20 us: a stale "free" would
 * put a worker on a core another library's spinner holds, the slow case this check
 * exists for. The 0.5 ms keeps short-lived tasks out: with "two reads in a row" as the
 * rule, back-to-back relu of 2^18 floats (13 us regions, the machine otherwise idle)
 * ran 3-4% of its regions on one thread, against 0.3-0.8% re-reading every 20 us.
 * A free reading is also kept, up to 1 ms, while regions follow each other within
 * 20 us of the last one's end (kernels called back to back from Python): nothing
 * else can have run a thread team in such a gap, and re-reading cost back-to-back
 * relu_backward of 2^20 floats (~40 us a call) 4% of its time. */
#define FRT_LOADAVG_FREE_NS 20000u
#define FRT_LOADAVG_SPAN_NS 500000u
#define FRT_LOADAVG_HELD_MAX_NS 10000000u
#define FRT_LOADAVG_CHAIN_NS 1000000u
/* A worker that stopped spinning this recently may still be on its core, on its way
 * into the futex: the kernel counts it as running. Counted as "another task", it
 * shrank 6% of the regions of back-to-back max_pool2d backward calls (N32 C64 56x56,
 * regions ~60 us apart, just past the 50 us spin) to one thread; with the spin at 0
 * or 30 us, none. */
#define FRT_DOZE_NS 20000u

/* Tasks running on the machine other than the caller and our own spinning workers,
 * counted when the reading is taken (our workers' states then, not now: a worker that
 * spun at the read and sleeps now must not count as another task while the reading
 * is reused). */
static int frt_others_running(void) {
    uint64_t now = frt_now_ns();
    uint64_t held = frt_pool.loadavg_held_at ? frt_pool.loadavg_at - frt_pool.loadavg_held_at : 0;
    uint64_t ttl = FRT_LOADAVG_FREE_NS;
    if (held >= FRT_LOADAVG_SPAN_NS)
        ttl = held / 4 < FRT_LOADAVG_HELD_MAX_NS ? held / 4 : FRT_LOADAVG_HELD_MAX_NS;
    uint64_t last_end = atomic_load_explicit(&frt_pool.last_end_ns, memory_order_relaxed);
    if (ttl < FRT_LOADAVG_CHAIN_NS && frt_pool.loadavg_others == 0 && last_end
            && now - last_end <= FRT_LOADAVG_FREE_NS)
        ttl = FRT_LOADAVG_CHAIN_NS;   /* a free reading, regions back to back: see above */
    if (frt_pool.loadavg_at == 0 || now - frt_pool.loadavg_at > ttl) {
        char buf[128];
        int running = 1;
        if (frt_pool.loadavg_fd >= 0) {
            ssize_t len = pread(frt_pool.loadavg_fd, buf, sizeof(buf) - 1, 0);
            if (len > 0) {
                buf[len] = 0;
                /* "0.33 0.43 0.27 3/245 1234": the fourth field is running/total */
                char *p = buf;
                for (int field = 0; field < 3 && p; field++) {
                    p = strchr(p, ' ');
                    if (p)
                        p++;
                }
                if (p)
                    running = atoi(p);
            }
        }
        int ours = 0;
        for (int i = 1; i <= frt_pool.nworkers; i++) {
            int st = atomic_load(&frt_pool.slot[i].state);
            uint64_t dozed = atomic_load_explicit(&frt_pool.slot[i].dozed, memory_order_relaxed);
            ours += st == FRT_SPINNING
                    || (st == FRT_SLEEPING && now - dozed < FRT_DOZE_NS && now >= dozed);
        }
        int others = running - 1 - ours;
        frt_pool.loadavg_others = others > 0 ? others : 0;
        if (others <= 0)
            frt_pool.loadavg_held_at = 0;
        else if (!frt_pool.loadavg_held_at)
            frt_pool.loadavg_held_at = now;
        frt_pool.loadavg_at = now;
        atomic_fetch_add(&frt_pool.loadavg_reads, 1);
    }
    return frt_pool.loadavg_others;
}

/* A team of n shrunk to the cores the other tasks leave free (at least 1); the caller
 * holds the pool's busy lock. */
static int frt_free_team(int n) {
    int free_cpus = frt_pool.online_cpus - frt_others_running();
    if (free_cpus < n)
        n = free_cpus > 1 ? free_cpus : 1;
    return n;
}

static void frt_run_serial(void (*fn)(void *), void *data) {
    frt_team solo;
    frt_team *saved_team = frt_tls_team;
    int saved_tid = frt_tls_tid;
    long saved_ws = frt_tls_ws;
    memset(&solo, 0, sizeof(solo));
    solo.nthreads = 1;
    for (int i = 0; i < FRT_WS_SLOTS; i++)
        solo.ws[i].id = -1;
    frt_tls_team = &solo;
    frt_tls_tid = 0;
    frt_tls_ws = 0;
    fn(data);
    frt_tls_team = saved_team;
    frt_tls_tid = saved_tid;
    frt_tls_ws = saved_ws;
}

/* Run fn on a team. exact: exactly n threads, all at once (OpenBLAS's jobs wait for
 * each other); otherwise n is an upper bound, shrunk to the free cores. Returns 0
 * when an exact team could not be had (the pool is busy or threads ran out). */
static int frt_parallel(void (*fn)(void *), void *data, int n, int exact) {
    frt_init();
    int limit = atomic_load(&frt_pool.limit);
    if (!exact && limit > 0 && n > limit)
        n = limit;
    if (n > FRT_MAX_THREADS)
        n = exact ? 0 : FRT_MAX_THREADS;
    atomic_fetch_add(&frt_pool.regions, 1);
    /* Nested regions, and a second master while a team runs, get a team of one. */
    if (n <= 1 || frt_tls_team != NULL) {
        if (exact && n > 1)
            return 0;
        frt_run_serial(fn, data);
        return 1;
    }
    if (pthread_mutex_trylock(&frt_pool.busy) != 0) {
        if (exact)
            return 0;
        atomic_fetch_add(&frt_pool.serial_busy, 1);
        frt_run_serial(fn, data);
        return 1;
    }
    if (!exact && frt_pool.check_contention) {
        int m = frt_free_team(n);
        if (m < n) {
            n = m;
            atomic_fetch_add(&frt_pool.shrunk, 1);
        }
    }
    if (n > 1) {
        int got = frt_ensure_workers(n);
        if (exact && got < n) {
            pthread_mutex_unlock(&frt_pool.busy);
            return 0;
        }
        n = got;
    }
    if (n <= 1) {
        pthread_mutex_unlock(&frt_pool.busy);
        frt_run_serial(fn, data);
        atomic_store_explicit(&frt_pool.last_end_ns, frt_now_ns(), memory_order_relaxed);
        return 1;
    }
    atomic_fetch_add(&frt_pool.teams, 1);
    frt_team *t = &frt_pool.team;
    t->fn = fn;
    t->data = data;
    t->nthreads = n;
    atomic_store(&t->pending, (unsigned)(n - 1));
    atomic_store(&t->bar_count, 0);
    for (int i = 0; i < FRT_WS_SLOTS; i++)
        atomic_store(&t->ws[i].id, -1);
    for (int i = 1; i < n; i++) {
        frt_slot *s = &frt_pool.slot[i];
        atomic_fetch_add(&s->gen, 1);
        if (atomic_load(&s->state) == FRT_SLEEPING)
            frt_futex_wake(&s->gen, 1);
    }
    frt_tls_team = t;
    frt_tls_tid = 0;
    frt_tls_ws = 0;
    fn(data);
    frt_tls_team = NULL;
    unsigned left;
    uint64_t start = 0;
    for (unsigned i = 1; (left = atomic_load(&t->pending)) != 0; i++) {
        frt_relax();
        if ((i & 63) == 0) {
            uint64_t now = frt_now_ns();
            if (!start)
                start = now;
            else if (now - start > frt_pool.team_spin_ns) {
                atomic_fetch_add(&t->pending_sleepers, 1);
                while ((left = atomic_load(&t->pending)) != 0)
                    frt_futex_wait(&t->pending, left);
                atomic_fetch_sub(&t->pending_sleepers, 1);
                break;
            }
        }
    }
    atomic_store_explicit(&frt_pool.last_end_ns, frt_now_ns(), memory_order_relaxed);
    pthread_mutex_unlock(&frt_pool.busy);
    return 1;
}

FRT_EXPORT void fastnn_rt_parallel(void (*fn)(void *), void *data, unsigned num_threads) {
    frt_init();
    frt_parallel(fn, data, num_threads ? (int)num_threads : frt_pool.max_threads, 0);
}

/* The team a region asked for n threads would get now (1 when the pool is busy, in a
 * region already, or the cores are held): for kernels whose split of the work into
 * items pays only with a second thread, so that a team shrunk to one runs the serial
 * code rather than the items one after the other. A hint, read without holding the
 * pool: the region itself decides again. */
FRT_EXPORT int fastnn_rt_team_size(int n) {
    frt_init();
    int limit = atomic_load(&frt_pool.limit);
    if (limit > 0 && n > limit)
        n = limit;
    if (n <= 1 || frt_tls_team != NULL)
        return 1;
    if (!frt_pool.check_contention)
        return n;
    if (pthread_mutex_trylock(&frt_pool.busy) != 0)
        return 1;
    n = frt_free_team(n);
    pthread_mutex_unlock(&frt_pool.busy);
    return n;
}

FRT_EXPORT void fastnn_rt_barrier(void) {
    frt_team *t = frt_tls_team;
    if (!t || t->nthreads <= 1)
        return;
    unsigned gen = atomic_load(&t->bar_gen);
    if (atomic_fetch_add(&t->bar_count, 1) == t->nthreads - 1) {
        atomic_store(&t->bar_count, 0);
        atomic_fetch_add(&t->bar_gen, 1);
        if (atomic_load(&t->bar_sleepers))
            frt_futex_wake(&t->bar_gen, INT_MAX);
    } else {
        frt_wait_change(&t->bar_gen, gen, frt_pool.team_spin_ns, NULL, &t->bar_sleepers, NULL);
    }
}

/* Dynamic work-sharing loops. Every thread of the team calls _start for each loop in
 * the same order; the first one in sets the slot up. */
FRT_EXPORT bool fastnn_rt_loop_next(long *istart, long *iend) {
    frt_team *t = frt_tls_team;
    frt_ws *w = &t->ws[frt_tls_ws % FRT_WS_SLOTS];
    long i = atomic_fetch_add(&w->next, w->chunk);
    if (w->incr > 0 ? i >= w->end : i <= w->end)
        return false;
    long e = i + w->chunk;
    if (w->incr > 0 ? e > w->end : e < w->end)
        e = w->end;
    *istart = i;
    *iend = e;
    return true;
}

FRT_EXPORT bool fastnn_rt_loop_start(long start, long end, long incr, long chunk,
                                     long *istart, long *iend) {
    frt_team *t = frt_tls_team;
    if (!t) {            /* an orphaned loop outside any region: one thread does it */
        *istart = start;
        *iend = end;
        return incr > 0 ? start < end : start > end;
    }
    long id = ++frt_tls_ws;
    frt_ws *w = &t->ws[id % FRT_WS_SLOTS];
    while (atomic_load_explicit(&w->id, memory_order_acquire) != id) {
        int expected = 0;
        if (atomic_compare_exchange_weak(&w->lock, &expected, 1)) {
            if (atomic_load(&w->id) != id) {
                w->end = end;
                w->incr = incr;
                w->chunk = (chunk > 0 ? chunk : 1) * incr;
                atomic_store(&w->next, start);
                atomic_store_explicit(&w->id, id, memory_order_release);
            }
            atomic_store(&w->lock, 0);
        } else {
            frt_relax();
        }
    }
    return fastnn_rt_loop_next(istart, iend);
}

FRT_EXPORT int fastnn_rt_thread_num(void) { return frt_tls_team ? frt_tls_tid : 0; }
FRT_EXPORT int fastnn_rt_num_threads(void) { return frt_tls_team ? frt_tls_team->nthreads : 1; }
FRT_EXPORT int fastnn_rt_in_parallel(void) {
    return frt_tls_team != NULL && frt_tls_team->nthreads > 1;
}
FRT_EXPORT int fastnn_rt_max_threads(void) {
    frt_init();
    int limit = atomic_load(&frt_pool.limit);
    return limit > 0 && limit < frt_pool.max_threads ? limit : frt_pool.max_threads;
}

static pthread_mutex_t frt_critical_lock = PTHREAD_MUTEX_INITIALIZER;
FRT_EXPORT void fastnn_rt_critical_start(void) { pthread_mutex_lock(&frt_critical_lock); }
FRT_EXPORT void fastnn_rt_critical_end(void) { pthread_mutex_unlock(&frt_critical_lock); }

/* threadpoolctl's controller (fastnn._threads) sets and reads the limit here. */
FRT_EXPORT int fastnn_rt_get_limit(void) { return atomic_load(&frt_pool.limit); }
FRT_EXPORT void fastnn_rt_set_limit(int n) { atomic_store(&frt_pool.limit, n > 0 ? n : 0); }

/* The affinity mask is read again once per tick of the coarse clock (a few ms): a
 * change by os.sched_setaffinity shows within that, and get_num_threads() does not pay
 * a system call on every kernel call. */
FRT_EXPORT int fastnn_rt_available_cpus(void) {
    static _Atomic long long cached_at = -1;
    static atomic_int cached = 1;
    struct timespec ts;
#ifdef CLOCK_MONOTONIC_COARSE
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
#else
    clock_gettime(CLOCK_MONOTONIC, &ts);
#endif
    long long now = (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
    if (atomic_load(&cached_at) != now) {
        atomic_store(&cached, frt_available_cpus());
        atomic_store(&cached_at, now);
    }
    return atomic_load(&cached);
}

/* ---- the coexistence setting: OpenBLAS's parallel work on this pool ------------
 * openblas_set_threads_callback_function(fastnn_rt_openblas_callback) makes OpenBLAS
 * hand its jobs here instead of to its own pthreads, whose idle workers spin for
 * about 100 ms after every call. The jobs of one call synchronise with each other,
 * so they must all run at once: on the pool when it is free, else on threads made
 * for the call. */
typedef void (*frt_dojob_fn)(int thread_num, void *jobdata, int dojob_data);
typedef struct {
    frt_dojob_fn dojob;
    int numjobs;
    size_t elsize;
    char *jobdata;
    int dojob_data;
} frt_blas_job;

static void frt_blas_body(void *arg) {
    frt_blas_job *j = (frt_blas_job *)arg;
    int tid = fastnn_rt_thread_num(), nt = fastnn_rt_num_threads();
    for (int i = tid; i < j->numjobs; i += nt)
        j->dojob(i, j->jobdata + (size_t)i * j->elsize, j->dojob_data);
}

typedef struct {
    frt_blas_job *job;
    int index;
} frt_blas_one;

static void *frt_blas_thread(void *arg) {
    frt_blas_one *o = (frt_blas_one *)arg;
    o->job->dojob(o->index, o->job->jobdata + (size_t)o->index * o->job->elsize,
                  o->job->dojob_data);
    return NULL;
}

FRT_EXPORT void fastnn_rt_openblas_callback(int sync, frt_dojob_fn dojob, int numjobs,
                                            size_t elsize, void *jobdata, int dojob_data) {
    (void)sync;   /* always waits for the jobs */
    frt_blas_job job = {dojob, numjobs, elsize, (char *)jobdata, dojob_data};
    if (numjobs <= 0)
        return;
    if (numjobs == 1) {
        dojob(0, jobdata, dojob_data);
        return;
    }
    if (frt_parallel(frt_blas_body, &job, numjobs, 1))
        return;
    /* Pool busy (another thread's kernel) or nested: threads for this call. */
    pthread_t th[64];
    frt_blas_one one[64];
    int made = 0, want = numjobs - 1 < 64 ? numjobs - 1 : 64;
    for (int i = 0; i < want; i++) {
        one[i].job = &job;
        one[i].index = i + 1;
        if (pthread_create(&th[i], NULL, frt_blas_thread, &one[i]) != 0)
            break;
        made++;
    }
    dojob(0, jobdata, dojob_data);
    for (int i = made + 1; i < numjobs; i++)   /* only if threads ran out */
        dojob(i, (char *)jobdata + (size_t)i * elsize, dojob_data);
    for (int i = 0; i < made; i++)
        pthread_join(th[i], NULL);
}

FRT_EXPORT void *fastnn_rt_openblas_callback_address(void) {
    return (void *)&fastnn_rt_openblas_callback;
}

#endif /* the pool */
#endif
