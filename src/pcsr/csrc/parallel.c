#include "parallel.h"

#include <stddef.h>

int pcsr_cpu_supported(void) {
#if HAVE_X86
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
#else
    return 0;
#endif
}

int pcsr_bf16_supported(void) {
#if HAVE_BF16
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bf16");
#else
    return 0;
#endif
}

typedef void (*gomp_parallel_fn)(void (*)(void *), void *, unsigned, unsigned);
typedef int (*omp_int_fn)(void);

static gomp_parallel_fn gomp_parallel = NULL;
static omp_int_fn thread_num = NULL, num_threads = NULL;

/* The OpenMP runtime's GOMP_parallel, omp_get_thread_num and omp_get_num_threads; NULL: none. */
void pcsr_set_openmp(void *parallel, void *tnum, void *tcount) {
    if (parallel && tnum && tcount) {
        gomp_parallel = (gomp_parallel_fn)parallel;
        thread_num = (omp_int_fn)tnum;
        num_threads = (omp_int_fn)tcount;
    } else {
        gomp_parallel = NULL;
    }
}

struct job {
    pcsr_range_fn fn;
    void *ctx;
    int64_t n, grain;
};

static void worker(void *arg) {
    const struct job *j = (const struct job *)arg;
    int64_t t = thread_num(), team = num_threads();
    int64_t parts = (j->n + j->grain - 1) / j->grain;
    int64_t a = parts * t / team, b = parts * (t + 1) / team;
    int64_t end = b * j->grain < j->n ? b * j->grain : j->n;
    if (a < b) j->fn(j->ctx, a * j->grain, end);
}

void pcsr_parallel_for(int64_t n, int64_t grain, int threads, pcsr_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (grain < 1) grain = 1;
    if (gomp_parallel == NULL || threads <= 1 || n <= grain) {
        fn(ctx, 0, n);
        return;
    }
    struct job j = {fn, ctx, n, grain};
    gomp_parallel(worker, &j, (unsigned)threads, 0);
}

struct dynamic_job {
    pcsr_range_fn fn;
    void *ctx;
    int64_t n, chunk, next;
};

static void dynamic_worker(void *arg) {
    struct dynamic_job *j = (struct dynamic_job *)arg;
    for (;;) {
        int64_t c = __atomic_fetch_add(&j->next, 1, __ATOMIC_RELAXED);
        if (c * j->chunk >= j->n) return;
        int64_t end = (c + 1) * j->chunk < j->n ? (c + 1) * j->chunk : j->n;
        j->fn(j->ctx, c * j->chunk, end);
    }
}

void pcsr_parallel_for_dynamic(int64_t n, int64_t chunk, int threads, pcsr_range_fn fn, void *ctx) {
    if (n <= 0) return;
    if (chunk < 1) chunk = 1;
    if (gomp_parallel == NULL || threads <= 1 || n <= chunk) {
        fn(ctx, 0, n);
        return;
    }
    struct dynamic_job j = {fn, ctx, n, chunk, 0};
    gomp_parallel(dynamic_worker, &j, (unsigned)threads, 0);
}
