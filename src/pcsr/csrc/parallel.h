/* What the kernels share: the CPU check, and threads: torch's own OpenMP team, borrowed through GOMP_parallel.
 *
 * Why: a kernel that ran on threads of its own would compete for the cores with torch's OpenMP
 * workers, which spin for milliseconds after every parallel operation before they sleep. The
 * Python side finds GOMP_parallel (libgomp's entry point; Intel's and LLVM's runtimes export it
 * too) in the process once torch is loaded and hands it over with pcsr_set_openmp; without it
 * the kernels run on the calling thread.
 */
#ifndef PCSR_PARALLEL_H
#define PCSR_PARALLEL_H
#include <stdint.h>

#if defined(__x86_64__) || defined(_M_X64)
#include <immintrin.h>
#define HAVE_X86 1
#define TARGET __attribute__((target("avx2,fma"))) /* built for any x86; run where pcsr_cpu_supported */
#else
#define HAVE_X86 0
#endif

/* The bf16 kernel (mlp_bf16.c) needs a compiler that knows AVX512-BF16: gcc 10, clang 9. */
#if HAVE_X86 && (defined(__clang__) ? __clang_major__ >= 9 : (defined(__GNUC__) && __GNUC__ >= 10))
#define HAVE_BF16 1
#else
#define HAVE_BF16 0
#endif

/* 1 where this build and CPU run the kernels (x86 with AVX2 and FMA), else 0. */
int pcsr_cpu_supported(void);

/* 1 where this build and CPU run the bf16 kernel (AVX512F/BW/VL and AVX512-BF16), else 0. */
int pcsr_bf16_supported(void);

typedef void (*pcsr_range_fn)(void *ctx, int64_t begin, int64_t end);

/* fn(ctx, b, e) over [0, n) in parts that are multiples of `grain`, on up to `threads` threads. */
void pcsr_parallel_for(int64_t n, int64_t grain, int threads, pcsr_range_fn fn, void *ctx);

/* fn(ctx, b, e) over [0, n) in chunks of `chunk`, each thread taking the next free one. */
void pcsr_parallel_for_dynamic(int64_t n, int64_t chunk, int threads, pcsr_range_fn fn, void *ctx);

#endif
