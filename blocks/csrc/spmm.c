/* Sparse (CSR) x dense product for deployed sparse 1x1 convolutions and linear layers (efficient-zoo).
 *
 *   out[r, p] = bias[r] + sum_{k in row r} values[k] * x[indices[k], p]     r < rows, p < n
 *
 * x is (in, n) and out is (rows, n), both row-major and contiguous: for a 1x1 convolution over an NCHW sample,
 * x is the activation viewed as C x HW, so no transposition is needed (the layout "Fast Sparse ConvNets" uses).
 * Each non-zero weight is broadcast against a strip of up to 64 pixels held in vector registers (GCC vector
 * extensions: AVX-512, AVX2 or SSE, whatever -march=native offers), alternating between two sets of accumulators
 * so that two chains of multiply-adds are in flight; a strip of x is reused by all output rows before the next
 * one is read. Threads (OpenMP) split the pixels when there are many, the rows otherwise.
 * Compiled on first use by blocks/native.py; torch's MKL product is the fallback.
 */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif
typedef float vec16 __attribute__((vector_size(64), aligned(4)));
static inline vec16 load16(const float* p) { vec16 v; memcpy(&v, p, sizeof v); return v; }
static inline void store16(float* p, vec16 v) { memcpy(p, &v, sizeof v); }
static inline vec16 splat16(float s) { vec16 v = {0}; return v + s; }

/* V full vectors (16*V pixels from p), two accumulator sets over alternate non-zeros (two FMA chains) */
#define DEFINE_STRIP(NAME, V)                                                                                  \
    static inline void NAME(int r0, int r1, int p, int n, const int32_t* indptr, const int32_t* indices,      \
                            const float* values, const float* x, const float* bias, float* out) {             \
        for (int r = r0; r < r1; r++) {                                                                       \
            vec16 a[V], c[V];                                                                                 \
            for (int v = 0; v < V; v++) { a[v] = splat16(bias ? bias[r] : 0.0f); c[v] = splat16(0.0f); }     \
            int32_t k = indptr[r];                                                                            \
            const int32_t e = indptr[r + 1];                                                                  \
            for (; k + 1 < e; k += 2) {                                                                       \
                const float w0 = values[k], w1 = values[k + 1];                                               \
                const float* x0 = x + (int64_t)indices[k] * n + p;                                            \
                const float* x1 = x + (int64_t)indices[k + 1] * n + p;                                        \
                for (int v = 0; v < V; v++) { a[v] += w0 * load16(x0 + 16 * v); c[v] += w1 * load16(x1 + 16 * v); } \
            }                                                                                                 \
            if (k < e) {                                                                                      \
                const float* x0 = x + (int64_t)indices[k] * n + p;                                            \
                for (int v = 0; v < V; v++) a[v] += values[k] * load16(x0 + 16 * v);                          \
            }                                                                                                 \
            float* o = out + (int64_t)r * n + p;                                                              \
            for (int v = 0; v < V; v++) store16(o + 16 * v, a[v] + c[v]);                                     \
        }                                                                                                     \
    }
DEFINE_STRIP(strip4, 4)
DEFINE_STRIP(strip3, 3)
DEFINE_STRIP(strip2, 2)
DEFINE_STRIP(strip1, 1)

/* fewer than 16 pixels from p: scalar, two chains */
static inline void strip_tail(int r0, int r1, int p, int len, int n, const int32_t* indptr, const int32_t* indices,
                              const float* values, const float* x, const float* bias, float* out) {
    for (int r = r0; r < r1; r++) {
        float a[16], c[16];
        for (int t = 0; t < len; t++) { a[t] = bias ? bias[r] : 0.0f; c[t] = 0.0f; }
        int32_t k = indptr[r];
        const int32_t e = indptr[r + 1];
        for (; k + 1 < e; k += 2) {
            const float w0 = values[k], w1 = values[k + 1];
            const float* x0 = x + (int64_t)indices[k] * n + p;
            const float* x1 = x + (int64_t)indices[k + 1] * n + p;
            for (int t = 0; t < len; t++) { a[t] += w0 * x0[t]; c[t] += w1 * x1[t]; }
        }
        if (k < e) {
            const float* x0 = x + (int64_t)indices[k] * n + p;
            for (int t = 0; t < len; t++) a[t] += values[k] * x0[t];
        }
        float* o = out + (int64_t)r * n + p;
        for (int t = 0; t < len; t++) o[t] = a[t] + c[t];
    }
}

/* rows [r0, r1) x pixels [p0, p1) of the output */
static void spmm_block(int r0, int r1, int p0, int p1, int n, const int32_t* indptr, const int32_t* indices,
                       const float* values, const float* x, const float* bias, float* out) {
    int p = p0;
    for (; p + 64 <= p1; p += 64) strip4(r0, r1, p, n, indptr, indices, values, x, bias, out);
    switch ((p1 - p) / 16) {
        case 3: strip3(r0, r1, p, n, indptr, indices, values, x, bias, out); p += 48; break;
        case 2: strip2(r0, r1, p, n, indptr, indices, values, x, bias, out); p += 32; break;
        case 1: strip1(r0, r1, p, n, indptr, indices, values, x, bias, out); p += 16; break;
        default: break;
    }
    if (p < p1) strip_tail(r0, r1, p, p1 - p, n, indptr, indices, values, x, bias, out);
}

int zoo_spmm_abi_version(void) { return 1; }

void zoo_spmm_f32(int rows, int n, const int32_t* indptr, const int32_t* indices, const float* values,
                  const float* x, const float* bias, float* out, int threads) {
#pragma omp parallel num_threads(threads > 0 ? threads : 1)
    {
        int nt = 1, t = 0;
#ifdef _OPENMP
        nt = omp_get_num_threads();
        t = omp_get_thread_num();
#endif
        if (n >= 128 * nt) { /* many pixels: each thread takes a range of 64-pixel strips, walked 256 at a time */
            const int strips = (n + 63) / 64;
            const int p0 = 64 * (strips * t / nt);
            const int p1 = 64 * (strips * (t + 1) / nt) < n ? 64 * (strips * (t + 1) / nt) : n;
            for (int s = p0; s < p1; s += 256)
                spmm_block(0, rows, s, s + 256 < p1 ? s + 256 : p1, n, indptr, indices, values, x, bias, out);
        } else {
            spmm_block(rows * t / nt, rows * (t + 1) / nt, 0, n, n, indptr, indices, values, x, bias, out);
        }
    }
}
