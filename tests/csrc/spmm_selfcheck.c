/* Self-check of blocks/csrc/spmm.c for builds that cannot be loaded into this process (cross-compiled ones, run
 * under an emulator such as qemu-aarch64): random CSR products over awkward sizes against a double-precision
 * reference. Prints the worst relative error and exits 0 when every product is within 1e-5, 1 otherwise.
 * Build: cc -O2 -fopenmp -std=c99 -ffp-contract=fast tests/csrc/spmm_selfcheck.c blocks/csrc/spmm.c -o check -lm
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

void zoo_spmm_f32(int rows, int n, const int32_t* indptr, const int32_t* indices, const float* values,
                  const float* x, const float* bias, float* out, int threads);
const char* zoo_spmm_config(void);

static uint32_t state = 12345u;
static float uniform(void) { /* in [-1, 1) */
    state = state * 1664525u + 1013904223u;
    return (float)(state >> 8) / 8388608.0f - 1.0f;
}

static double check(int rows, int cols, int n, float density, int threads) {
    int32_t* indptr = malloc(sizeof(int32_t) * (rows + 1));
    int32_t* indices = malloc(sizeof(int32_t) * rows * cols);
    float* values = malloc(sizeof(float) * rows * cols);
    float* x = malloc(sizeof(float) * cols * n);
    float* bias = malloc(sizeof(float) * rows);
    float* out = malloc(sizeof(float) * rows * n);
    int nnz = 0;
    for (int r = 0; r < rows; r++) {
        indptr[r] = nnz;
        for (int c = 0; c < cols; c++)
            if (r >= 2 && (uniform() + 1.0f) * 0.5f < density) { indices[nnz] = c; values[nnz++] = uniform(); }
        bias[r] = uniform();
    }
    indptr[rows] = nnz;
    for (int i = 0; i < cols * n; i++) x[i] = uniform();
    zoo_spmm_f32(rows, n, indptr, indices, values, x, bias, out, threads);
    double worst = 0.0, scale = 1e-30;
    for (int r = 0; r < rows; r++)
        for (int p = 0; p < n; p++) {
            double ref = bias[r];
            for (int k = indptr[r]; k < indptr[r + 1]; k++) ref += (double)values[k] * x[(int64_t)indices[k] * n + p];
            double err = fabs(ref - out[(int64_t)r * n + p]);
            worst = err > worst ? err : worst;
            scale = fabs(ref) > scale ? fabs(ref) : scale;
        }
    free(indptr); free(indices); free(values); free(x); free(bias); free(out);
    return worst / scale;
}

int main(void) {
    const int sizes[] = {1, 3, 4, 5, 16, 17, 31, 32, 33, 49, 64, 100, 129, 196, 300, 784};
    double worst = 0.0;
    for (unsigned i = 0; i < sizeof sizes / sizeof sizes[0]; i++)
        for (int threads = 1; threads <= 2; threads++) {
            double e = check(37, 53, sizes[i], 0.15f, threads);
            worst = e > worst ? e : worst;
        }
    printf("%s: worst relative error %.3g\n", zoo_spmm_config(), worst);
    return worst <= 1e-5 ? 0 : 1;
}
