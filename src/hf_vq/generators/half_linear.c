// out (M, N) fp32 = x (M, K) fp32 @ W, for an fp16 or bf16 weight packed in 32-column tiles: (N / 32, K, 32).
//
// Decoding multiplies a few rows (the batch, doubled for CFG) by every weight, so its time goes into streaming
// the weights from memory. Packed, each 32-column tile is one contiguous run of K * 64 bytes, which the hardware
// prefetchers stream at close to memory bandwidth; the threads split the tiles, and each tile is read from memory
// once for all rows. Every tile row is converted to fp32 on load and multiplied into a 16-row x 32-column block
// of fp32 accumulators (32 zmm registers' worth; the compiler spills a few, which costs less than smaller blocks).
#include <immintrin.h>
#include <stdint.h>
#include <stdlib.h>

#define ROWS 16
#define COLS 32
#define PREFETCH_ROWS 32  // 2 KB ahead: enough to cover memory latency at this loop's pace

static inline __m512 load_fp16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

static inline __m512 load_bf16(const uint16_t *p) {  // a bf16 is the top half of an fp32
    __m512i wide = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}

// One (rows <= 16) x 32 output block from xt, the block's rows of x transposed to (K, 16), zero past `rows`.
#define DEFINE_BLOCK(NAME, LOAD)                                                                            \
    static void NAME(const float *xt, const uint16_t *tile, float *out, int64_t rows, int64_t K, int64_t N) { \
        __m512 acc[ROWS][2];                                                                                 \
        for (int64_t r = 0; r < ROWS; r++) acc[r][0] = acc[r][1] = _mm512_setzero_ps();                      \
        for (int64_t k = 0; k < K; k++) {                                                                    \
            const uint16_t *row = tile + k * COLS;                                                           \
            if (k + PREFETCH_ROWS < K) _mm_prefetch((const char *)(row + PREFETCH_ROWS * COLS), _MM_HINT_T0); \
            __m512 w0 = LOAD(row), w1 = LOAD(row + 16);                                                      \
            const float *xk = xt + k * ROWS;                                                                 \
            for (int64_t r = 0; r < ROWS; r++) {                                                             \
                __m512 xb = _mm512_set1_ps(xk[r]);                                                           \
                acc[r][0] = _mm512_fmadd_ps(xb, w0, acc[r][0]);                                              \
                acc[r][1] = _mm512_fmadd_ps(xb, w1, acc[r][1]);                                              \
            }                                                                                                \
        }                                                                                                    \
        for (int64_t r = 0; r < rows; r++) {                                                                 \
            _mm512_storeu_ps(out + r * N, acc[r][0]);                                                        \
            _mm512_storeu_ps(out + r * N + 16, acc[r][1]);                                                   \
        }                                                                                                    \
    }
DEFINE_BLOCK(block_fp16, load_fp16)
DEFINE_BLOCK(block_bf16, load_bf16)

// Returns 0, or -1 if the scratch buffer could not be allocated.
int hf_vq_half_linear(const float *x, const uint16_t *packed, float *out, int64_t M, int64_t K, int64_t N,
                      int bf16, int num_threads) {
    int64_t blocks = (M + ROWS - 1) / ROWS;
    float *xt = calloc((size_t)(blocks * K * ROWS), sizeof(float));  // x as (blocks, K, 16), zero-padded rows
    if (xt == NULL) return -1;
    for (int64_t m = 0; m < M; m++)
        for (int64_t k = 0; k < K; k++) xt[((m / ROWS) * K + k) * ROWS + m % ROWS] = x[m * K + k];
#pragma omp parallel for schedule(static) num_threads(num_threads)
    for (int64_t n0 = 0; n0 < N; n0 += COLS) {
        const uint16_t *tile = packed + n0 * K;
        for (int64_t b = 0; b < blocks; b++) {  // later blocks find the tile in cache
            int64_t rows = M - b * ROWS < ROWS ? M - b * ROWS : ROWS;
            float *dst = out + b * ROWS * N + n0;
            if (bf16)
                block_bf16(xt + b * K * ROWS, tile, dst, rows, K, N);
            else
                block_fp16(xt + b * K * ROWS, tile, dst, rows, K, N);
        }
    }
    free(xt);
    return 0;
}
