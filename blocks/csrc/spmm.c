/* Sparse (CSR) x dense product for deployed sparse 1x1 convolutions and linear layers (efficient-zoo).
 *
 *   out[r, p] = bias[r] + sum_{k in row r} values[k] * x[indices[k], p]     r < rows, p < n
 *
 * x is (in, n) and out is (rows, n), both row-major and contiguous: for a 1x1 convolution over an NCHW sample,
 * x is the activation viewed as C x HW, so no transposition is needed (the layout "Fast Sparse ConvNets" uses).
 * Each non-zero weight is broadcast against a strip of ZOO_NV vectors of ZOO_VW pixels held in registers (with
 * ZOO_CH = 2, two sets of accumulators over alternate non-zeros); a strip of x is
 * reused by all output rows before the next one is read. Threads (OpenMP) split the pixels when there are many,
 * the rows otherwise. Compiled on first use by blocks/native.py; torch's MKL product is the fallback.
 *
 * Vector width and strip shape follow the register file of the ISA the compiler targets. The vector type is never
 * wider than a register: GCC lowers a wider generic vector through the stack (the first version of this kernel used
 * 64-byte vectors everywhere; its AVX2 build broadcast each weight with 16 scalar stores and kept the accumulators in
 * memory, ~1 GFLOP/s), and the per-vector loops are unrolled so that the accumulators stay in registers. Strips hold
 * ZOO_NV = 8 vectors in one chain by default: 8 independent accumulators cover two FMA ports x 4 cycles of latency,
 * and fit 16 registers (AVX2, SSE) as well as 32 (AVX-512, NEON); 4 x 2 chains, 2 x 2 and 6 x 2 measured no better
 * (benchmarks/sparse_kernel.py, MODEL_CARDS.md):
 *   AVX-512: 16 floats per vector, 128-pixel strips;  AVX2/FMA, AVX: 8 floats, 64-pixel strips;
 *   NEON, SSE2, other: 4 floats, 32-pixel strips.
 * -DZOO_VW / -DZOO_NV / -DZOO_CH override them. Multiply-adds are fused where the ISA has FMA (-ffp-contract=fast).
 */
#include <stdint.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#if defined(__AVX512F__)
#define ZOO_ISA_NAME "avx512"
#define ZOO_VW_DEFAULT 16
#define ZOO_NV_DEFAULT 8
#elif defined(__AVX2__) && defined(__FMA__)
#define ZOO_ISA_NAME "avx2-fma"
#define ZOO_VW_DEFAULT 8
#define ZOO_NV_DEFAULT 8
#elif defined(__AVX__)
#define ZOO_ISA_NAME "avx"
#define ZOO_VW_DEFAULT 8
#define ZOO_NV_DEFAULT 8
#elif defined(__ARM_NEON) || defined(__aarch64__)
#define ZOO_ISA_NAME "neon"
#define ZOO_VW_DEFAULT 4
#define ZOO_NV_DEFAULT 8
#elif defined(__SSE2__)
#define ZOO_ISA_NAME "sse2"
#define ZOO_VW_DEFAULT 4
#define ZOO_NV_DEFAULT 8
#else
#define ZOO_ISA_NAME "generic"
#define ZOO_VW_DEFAULT 4
#define ZOO_NV_DEFAULT 8
#endif
#ifndef ZOO_VW
#define ZOO_VW ZOO_VW_DEFAULT
#endif
#ifndef ZOO_NV
#define ZOO_NV ZOO_NV_DEFAULT
#endif
#ifndef ZOO_CH
#define ZOO_CH 1
#endif
#if ZOO_NV < 1 || ZOO_NV > 8 || ZOO_CH < 1 || ZOO_CH > 2
#error "ZOO_NV must be in 1..8 and ZOO_CH in 1..2"
#endif
#define ZOO_STRIP (ZOO_VW * ZOO_NV) /* pixels per strip */
#define ZOO_BLOCK (ZOO_STRIP * (256 / ZOO_STRIP > 0 ? 256 / ZOO_STRIP : 1)) /* pixels walked at a time */

typedef float vec __attribute__((vector_size(ZOO_VW * sizeof(float))));
typedef float vec_u __attribute__((vector_size(ZOO_VW * sizeof(float)), aligned(4), may_alias)); /* unaligned */
static inline vec loadv(const float* p) { return *(const vec_u*)p; }
static inline void storev(float* p, vec v) { *(vec_u*)p = v; }
static inline vec splat(float s) { return (vec){0} + s; }
/* the loops over a strip's vectors must be unrolled, so that the accumulators live in registers */
#define UNROLL _Pragma("GCC unroll 8")

/* V full vectors (ZOO_VW * V pixels from p) for rows [r0, r1) */
#define DEFINE_STRIP(NAME, V)                                                                                     \
    static inline void NAME(int r0, int r1, int p, int n, const int32_t* indptr, const int32_t* indices,         \
                            const float* values, const float* x, const float* bias, float* out) {                \
        for (int r = r0; r < r1; r++) {                                                                          \
            vec a[V];                                                                                            \
            const vec b0 = splat(bias ? bias[r] : 0.0f);                                                         \
            UNROLL for (int v = 0; v < V; v++) a[v] = b0;                                                               \
            int32_t k = indptr[r];                                                                               \
            const int32_t e = indptr[r + 1];                                                                     \
            if (ZOO_CH == 2) {                                                                                   \
                vec c[V];                                                                                        \
                UNROLL for (int v = 0; v < V; v++) c[v] = splat(0.0f);                                                  \
                for (; k + 1 < e; k += 2) {                                                                      \
                    const vec w0 = splat(values[k]), w1 = splat(values[k + 1]);                                  \
                    const float* x0 = x + (int64_t)indices[k] * n + p;                                           \
                    const float* x1 = x + (int64_t)indices[k + 1] * n + p;                                       \
                    UNROLL for (int v = 0; v < V; v++) {                                                                \
                        a[v] += w0 * loadv(x0 + ZOO_VW * v);                                                     \
                        c[v] += w1 * loadv(x1 + ZOO_VW * v);                                                     \
                    }                                                                                            \
                }                                                                                                \
                UNROLL for (int v = 0; v < V; v++) a[v] += c[v];                                                        \
            }                                                                                                    \
            for (; k < e; k++) {                                                                                 \
                const vec w0 = splat(values[k]);                                                                 \
                const float* x0 = x + (int64_t)indices[k] * n + p;                                               \
                UNROLL for (int v = 0; v < V; v++) a[v] += w0 * loadv(x0 + ZOO_VW * v);                                 \
            }                                                                                                    \
            float* o = out + (int64_t)r * n + p;                                                                 \
            UNROLL for (int v = 0; v < V; v++) storev(o + ZOO_VW * v, a[v]);                                            \
        }                                                                                                        \
    }
DEFINE_STRIP(strip8, 8)
DEFINE_STRIP(strip7, 7)
DEFINE_STRIP(strip6, 6)
DEFINE_STRIP(strip5, 5)
DEFINE_STRIP(strip4, 4)
DEFINE_STRIP(strip3, 3)
DEFINE_STRIP(strip2, 2)
DEFINE_STRIP(strip1, 1)

typedef void (*strip_fn)(int, int, int, int, const int32_t*, const int32_t*, const float*, const float*,
                         const float*, float*);
static const strip_fn STRIPS[9] = {0, strip1, strip2, strip3, strip4, strip5, strip6, strip7, strip8};

/* fewer than ZOO_VW pixels from p: scalar */
static inline void strip_tail(int r0, int r1, int p, int len, int n, const int32_t* indptr, const int32_t* indices,
                              const float* values, const float* x, const float* bias, float* out) {
    for (int r = r0; r < r1; r++) {
        float a[ZOO_VW];
        for (int t = 0; t < len; t++) a[t] = bias ? bias[r] : 0.0f;
        for (int32_t k = indptr[r]; k < indptr[r + 1]; k++) {
            const float* x0 = x + (int64_t)indices[k] * n + p;
            for (int t = 0; t < len; t++) a[t] += values[k] * x0[t];
        }
        float* o = out + (int64_t)r * n + p;
        for (int t = 0; t < len; t++) o[t] = a[t];
    }
}

/* rows [r0, r1) x pixels [p0, p1) of the output */
static void spmm_block(int r0, int r1, int p0, int p1, int n, const int32_t* indptr, const int32_t* indices,
                       const float* values, const float* x, const float* bias, float* out) {
    int p = p0;
    for (; p + ZOO_STRIP <= p1; p += ZOO_STRIP) STRIPS[ZOO_NV](r0, r1, p, n, indptr, indices, values, x, bias, out);
    const int v = (p1 - p) / ZOO_VW;
    if (v > 0) {
        STRIPS[v](r0, r1, p, n, indptr, indices, values, x, bias, out);
        p += v * ZOO_VW;
    }
    if (p < p1) strip_tail(r0, r1, p, p1 - p, n, indptr, indices, values, x, bias, out);
}

int zoo_spmm_abi_version(void) { return 2; }

/* "isa vw nv ch": what this build runs (kernel_status, the decision cache key) */
const char* zoo_spmm_config(void) {
#define ZOO_STR2(x) #x
#define ZOO_STR(x) ZOO_STR2(x)
    return ZOO_ISA_NAME " vw=" ZOO_STR(ZOO_VW) " nv=" ZOO_STR(ZOO_NV) " ch=" ZOO_STR(ZOO_CH);
}

void zoo_spmm_f32(int rows, int n, const int32_t* indptr, const int32_t* indices, const float* values,
                  const float* x, const float* bias, float* out, int threads) {
    if (threads < 1) threads = 1;
    if (threads > 1 && (int64_t)rows * n < 4096) threads = 1; /* a tiny product: a parallel region costs more */
#pragma omp parallel num_threads(threads)
    {
        int nt = 1, t = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads();
        t = omp_get_thread_num();
#endif
        if (n >= 2 * ZOO_STRIP * nt) { /* many pixels: each thread takes a range of strips, walked a block at a time */
            const int strips = (n + ZOO_STRIP - 1) / ZOO_STRIP;
            const int p0 = ZOO_STRIP * (strips * t / nt);
            const int end = ZOO_STRIP * (strips * (t + 1) / nt);
            const int p1 = end < n ? end : n;
            for (int s = p0; s < p1; s += ZOO_BLOCK)
                spmm_block(0, rows, s, s + ZOO_BLOCK < p1 ? s + ZOO_BLOCK : p1, n, indptr, indices, values, x, bias, out);
        } else {
            spmm_block(rows * t / nt, rows * (t + 1) / nt, 0, n, n, indptr, indices, values, x, bias, out);
        }
    }
}
