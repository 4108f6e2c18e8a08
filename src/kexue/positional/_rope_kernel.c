/* kexue: fused rotary position embedding for CPU, one read and one write of x.
 *
 * out[pair] = (a cos - b sin, b cos + a sin) for each pair (a, b) of a row of x, with one
 * (cos, sin) per pair.  Pairs are (i, i + R/2) in the "half" layout and (2i, 2i + 1) in the
 * "interleaved" layout; entries R..D-1 of a row pass through.  `transpose` applies R^T
 * (sin negated): the inverse rotation, and the backward pass.
 *
 * Rows may have any leading strides (in elements; the last dimension is contiguous), so
 * transposed views such as (B, T, H, D) -> (B, H, T, D) need no copy, and cos/sin are
 * broadcast through stride-0 leading dimensions.  Arithmetic is in the cos/sin type (float
 * for float32/bfloat16/float16 data, double for float64 data); half types are converted on
 * load and rounded to nearest even on store.  Rows are split evenly over `nthreads` OpenMP
 * threads.  Compiled at first use by kexue.positional._native (see there for flags).
 */
#include <stdint.h>
#include <string.h>
#include <omp.h>

#define KX_MAXDIM 8

typedef struct {
    int64_t ndim;                 /* leading (row) dimensions, <= KX_MAXDIM */
    int64_t shape[KX_MAXDIM];
    int64_t x_stride[KX_MAXDIM];
    int64_t out_stride[KX_MAXDIM];
    int64_t cs_stride[KX_MAXDIM]; /* 0 where cos/sin broadcast */
} kx_layout;

static inline float kx_bf16_load(uint16_t h) {
    uint32_t u = ((uint32_t)h) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t kx_bf16_store(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u); /* quiet NaN */
    u += 0x7fffu + ((u >> 16) & 1u);                                            /* nearest even */
    return (uint16_t)(u >> 16);
}

#define KX_SAME(v) (v)

#define KX_DEFINE(NAME, XT, CT, LOAD, STORE)                                                        \
    int NAME(const XT *x, XT *out, const CT *cs, const CT *sn, const kx_layout *L, int64_t D,       \
             int64_t R, int interleaved, int transpose, int copy_tail, int nthreads) {              \
        const int64_t nd = L->ndim, h = R / 2;                                                      \
        int64_t rows = 1;                                                                           \
        if (nd > KX_MAXDIM || R % 2 != 0 || R > D) return -1;                                       \
        for (int64_t k = 0; k < nd; k++) rows *= L->shape[k];                                       \
        if (rows == 0) return 0; /* empty: nothing to do (and no division by a zero extent) */      \
        const CT sg = transpose ? (CT)-1 : (CT)1;                                                   \
        _Pragma("omp parallel num_threads(nthreads)") {                                             \
            const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();                   \
            const int64_t r0 = rows * tid / nt, r1 = rows * (tid + 1) / nt;                         \
            int64_t idx[KX_MAXDIM], rem = r0, xo = 0, oo = 0, co = 0;                               \
            for (int64_t k = nd - 1; k >= 0; k--) {                                                 \
                idx[k] = rem % L->shape[k];                                                         \
                rem /= L->shape[k];                                                                 \
            }                                                                                       \
            for (int64_t k = 0; k < nd; k++) {                                                      \
                xo += idx[k] * L->x_stride[k];                                                      \
                oo += idx[k] * L->out_stride[k];                                                    \
                co += idx[k] * L->cs_stride[k];                                                     \
            }                                                                                       \
            for (int64_t r = r0; r < r1; r++) {                                                     \
                const XT *xr = x + xo;                                                              \
                XT *orow = out + oo;                                                                \
                const CT *c = cs + co, *s = sn + co;                                                \
                if (!interleaved) {                                                                 \
                    for (int64_t i = 0; i < h; i++) {                                               \
                        const CT a = LOAD(xr[i]), b = LOAD(xr[i + h]), si = sg * s[i];              \
                        orow[i] = STORE(a * c[i] - b * si);                                         \
                        orow[i + h] = STORE(b * c[i] + a * si);                                     \
                    }                                                                               \
                } else {                                                                            \
                    for (int64_t i = 0; i < h; i++) {                                               \
                        const CT a = LOAD(xr[2 * i]), b = LOAD(xr[2 * i + 1]), si = sg * s[i];      \
                        orow[2 * i] = STORE(a * c[i] - b * si);                                     \
                        orow[2 * i + 1] = STORE(b * c[i] + a * si);                                 \
                    }                                                                               \
                }                                                                                   \
                if (copy_tail)                                                                      \
                    for (int64_t i = R; i < D; i++) orow[i] = xr[i];                                \
                for (int64_t k = nd - 1; k >= 0; k--) { /* odometer step to the next row */         \
                    idx[k]++;                                                                       \
                    xo += L->x_stride[k];                                                           \
                    oo += L->out_stride[k];                                                         \
                    co += L->cs_stride[k];                                                          \
                    if (idx[k] < L->shape[k]) break;                                                \
                    xo -= idx[k] * L->x_stride[k];                                                  \
                    oo -= idx[k] * L->out_stride[k];                                                \
                    co -= idx[k] * L->cs_stride[k];                                                 \
                    idx[k] = 0;                                                                     \
                }                                                                                   \
            }                                                                                       \
        }                                                                                           \
        return 0;                                                                                   \
    }

KX_DEFINE(kx_rope_float32, float, float, KX_SAME, KX_SAME)
KX_DEFINE(kx_rope_float64, double, double, KX_SAME, KX_SAME)
KX_DEFINE(kx_rope_bfloat16, uint16_t, float, kx_bf16_load, kx_bf16_store)

#if defined(__FLT16_MAX__)
#define KX_F16_LOAD(v) ((float)(v))
#define KX_F16_STORE(v) ((_Float16)(v))
KX_DEFINE(kx_rope_float16, _Float16, float, KX_F16_LOAD, KX_F16_STORE)
#endif
