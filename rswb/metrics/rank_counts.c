/* Fused rank counting for rswb.metrics.retrieval (compiled on first use by rswb/metrics/_native.py).
 *
 * One read of every similarity entry x = s[r, j] makes all four decisions the tie rules need:
 *   row r (i2t):    x > row_thr[r]  and  x == row_thr[r]
 *   column j (t2i): x > col_thr[j]  and  x == col_thr[j]
 * numpy needs one pass per decision (four comparisons plus their reductions); here the block is read once and the
 * counts stay in registers (rows) or in small int32 arrays that stay in cache (columns).
 *
 * Rows are taken four at a time so that each column threshold and counter is loaded and stored once per four rows.
 * The inner loops have no branches, so the compiler vectorises them. NaN compares false, as in numpy.
 * Column counters are int32: a call adds at most `rows` to each, and the caller hands each thread its own arrays
 * and folds them into int64 between calls.
 */
#include <stdint.h>

#define RSWB_COUNT_KERNEL(NAME, T)                                                                                  \
    void NAME(const T *s, int64_t rows, int64_t cols, int64_t row_stride, const T *row_thr, const T *col_thr,     \
              int64_t *row_gt, int64_t *row_eq, int32_t *col_gt, int32_t *col_eq) {                                 \
        int64_t r = 0;                                                                                              \
        for (; r + 4 <= rows; r += 4) {                                                                             \
            const T *x0 = s + r * row_stride, *x1 = x0 + row_stride, *x2 = x1 + row_stride, *x3 = x2 + row_stride;  \
            const T t0 = row_thr[r], t1 = row_thr[r + 1], t2 = row_thr[r + 2], t3 = row_thr[r + 3];                 \
            int32_t g0 = 0, g1 = 0, g2 = 0, g3 = 0, e0 = 0, e1 = 0, e2 = 0, e3 = 0;                                 \
            for (int64_t j = 0; j < cols; ++j) {                                                                    \
                const T c = col_thr[j], v0 = x0[j], v1 = x1[j], v2 = x2[j], v3 = x3[j];                             \
                g0 += v0 > t0;                                                                                      \
                g1 += v1 > t1;                                                                                      \
                g2 += v2 > t2;                                                                                      \
                g3 += v3 > t3;                                                                                      \
                e0 += v0 == t0;                                                                                     \
                e1 += v1 == t1;                                                                                     \
                e2 += v2 == t2;                                                                                     \
                e3 += v3 == t3;                                                                                     \
                col_gt[j] += (v0 > c) + (v1 > c) + (v2 > c) + (v3 > c);                                             \
                col_eq[j] += (v0 == c) + (v1 == c) + (v2 == c) + (v3 == c);                                         \
            }                                                                                                       \
            row_gt[r] += g0;                                                                                        \
            row_gt[r + 1] += g1;                                                                                    \
            row_gt[r + 2] += g2;                                                                                    \
            row_gt[r + 3] += g3;                                                                                    \
            row_eq[r] += e0;                                                                                        \
            row_eq[r + 1] += e1;                                                                                    \
            row_eq[r + 2] += e2;                                                                                    \
            row_eq[r + 3] += e3;                                                                                    \
        }                                                                                                           \
        for (; r < rows; ++r) {                                                                                     \
            const T *x = s + r * row_stride;                                                                        \
            const T t = row_thr[r];                                                                                 \
            int32_t g = 0, e = 0;                                                                                   \
            for (int64_t j = 0; j < cols; ++j) {                                                                    \
                const T c = col_thr[j], v = x[j];                                                                   \
                g += v > t;                                                                                         \
                e += v == t;                                                                                        \
                col_gt[j] += v > c;                                                                                 \
                col_eq[j] += v == c;                                                                                \
            }                                                                                                       \
            row_gt[r] += g;                                                                                         \
            row_eq[r] += e;                                                                                         \
        }                                                                                                           \
    }

RSWB_COUNT_KERNEL(rswb_rank_counts_f32, float)
RSWB_COUNT_KERNEL(rswb_rank_counts_f64, double)

/* The ABI version the loader checks, so that a stale shared object is never called with other arguments. */
int rswb_rank_counts_abi(void) { return 1; }
