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
 * threads; one call may rotate two tensors (q and k) in the same parallel region.
 * The `_products` entry points of the half types round each product to the storage type before
 * the sum, as `q * cos + rotate_half(q) * sin` evaluated in that type does (transformers' recipe:
 * bit-identical to it); the plain entry points round once, on store.
 * Compiled at first use by kexue.positional._native (see there for flags).
 */
#include <stdint.h>
#include <string.h>
#include <omp.h>

#define KX_MAXDIM 8
#define KX_MAXJOBS 2

typedef struct {
    int64_t ndim;                 /* leading (row) dimensions, <= KX_MAXDIM */
    int64_t shape[KX_MAXDIM];
    int64_t x_stride[KX_MAXDIM];
    int64_t out_stride[KX_MAXDIM];
    int64_t cs_stride[KX_MAXDIM]; /* 0 where cos/sin broadcast */
} kx_layout;

/* One tensor to rotate.  A call takes one job (x) or two (q and k, one launch for both: their
 * rows are concatenated and split evenly over the threads).  R is shared; D may differ. */
typedef struct {
    const void *x;
    void *out;
    const void *cs;
    const void *sn;
    const kx_layout *layout;
    int64_t D;
    int64_t copy_tail;
    int64_t stream; /* write rows with non-temporal stores (large outputs, not in place) */
} kx_job;

/* Non-temporal row stores for float32 outputs larger than the cache: a row is rotated into an
 * aligned buffer by the same code as every other row (so the results are bit-identical), then
 * streamed out, which spares the read-for-ownership of each output line (a third of the
 * traffic of an out-of-place rotation).  Without AVX rows are stored normally. */
#define KX_ROWBUF 1024
#if defined(__AVX__)
#include <immintrin.h>
static inline int kx_can_stream_f32(const float *dst, int64_t D) {
    return ((uintptr_t)dst % 32 == 0) && D % 8 == 0 && D <= KX_ROWBUF;
}
static inline void kx_stream_f32(float *dst, const float *src, int64_t D) {
    for (int64_t i = 0; i < D; i += 8) _mm256_stream_ps(dst + i, _mm256_load_ps(src + i));
}
static inline void kx_fence(void) { _mm_sfence(); }
#else
static inline int kx_can_stream_f32(const float *dst, int64_t D) { (void)dst; (void)D; return 0; }
static inline void kx_stream_f32(float *dst, const float *src, int64_t D) { (void)dst; (void)src; (void)D; }
static inline void kx_fence(void) {}
#endif
#define KX_NO_STREAM_CAN(dst, D) 0
#define KX_NO_STREAM(dst, src, D) ((void)0)

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

static int64_t kx_rows(const kx_layout *L) {
    int64_t rows = 1;
    for (int64_t k = 0; k < L->ndim; k++) rows *= L->shape[k];
    return rows;
}

#define KX_SAME(v) (v)

/* NAME##_range rotates rows [r0, r1) of one job; NAME runs njobs jobs in one parallel region. */
#define KX_DEFINE(NAME, XT, CT, LOAD, STORE, CAN_STREAM, STREAM, RP)                               \
    static void NAME##_range(const kx_job *J, int64_t R, int interleaved, CT sg, int64_t r0,        \
                             int64_t r1) {                                                          \
        const kx_layout *L = J->layout;                                                             \
        const int64_t nd = L->ndim, h = R / 2, D = J->D;                                            \
        const XT *x = (const XT *)J->x;                                                             \
        XT *out = (XT *)J->out;                                                                     \
        const CT *cs = (const CT *)J->cs, *sn = (const CT *)J->sn;                                  \
        int64_t idx[KX_MAXDIM], rem = r0, xo = 0, oo = 0, co = 0, streamed = 0;                     \
        XT rowbuf[KX_ROWBUF] __attribute__((aligned(64)));                                          \
        for (int64_t k = nd - 1; k >= 0; k--) {                                                     \
            idx[k] = rem % L->shape[k];                                                             \
            rem /= L->shape[k];                                                                     \
        }                                                                                           \
        for (int64_t k = 0; k < nd; k++) {                                                          \
            xo += idx[k] * L->x_stride[k];                                                          \
            oo += idx[k] * L->out_stride[k];                                                        \
            co += idx[k] * L->cs_stride[k];                                                         \
        }                                                                                           \
        for (int64_t r = r0; r < r1; r++) {                                                         \
            const XT *xr = x + xo;                                                                  \
            XT *const dst = out + oo;                                                               \
            const int to_stream = J->stream && CAN_STREAM(dst, D);                                  \
            XT *orow = to_stream ? rowbuf : dst;                                                    \
            const CT *c = cs + co, *s = sn + co;                                                    \
            if (!interleaved) {                                                                     \
                for (int64_t i = 0; i < h; i++) {                                                   \
                    const CT a = LOAD(xr[i]), b = LOAD(xr[i + h]), si = sg * s[i];                  \
                    orow[i] = STORE(RP(a * c[i]) - RP(b * si));                                     \
                    orow[i + h] = STORE(RP(b * c[i]) + RP(a * si));                                 \
                }                                                                                   \
            } else {                                                                                \
                for (int64_t i = 0; i < h; i++) {                                                   \
                    const CT a = LOAD(xr[2 * i]), b = LOAD(xr[2 * i + 1]), si = sg * s[i];          \
                    orow[2 * i] = STORE(RP(a * c[i]) - RP(b * si));                                 \
                    orow[2 * i + 1] = STORE(RP(b * c[i]) + RP(a * si));                             \
                }                                                                                   \
            }                                                                                       \
            if (J->copy_tail)                                                                       \
                for (int64_t i = R; i < D; i++) orow[i] = xr[i];                                    \
            if (to_stream) {                                                                        \
                STREAM(dst, rowbuf, D);                                                             \
                streamed = 1;                                                                       \
            }                                                                                       \
            for (int64_t k = nd - 1; k >= 0; k--) { /* odometer step to the next row */             \
                idx[k]++;                                                                           \
                xo += L->x_stride[k];                                                               \
                oo += L->out_stride[k];                                                             \
                co += L->cs_stride[k];                                                              \
                if (idx[k] < L->shape[k]) break;                                                    \
                xo -= idx[k] * L->x_stride[k];                                                      \
                oo -= idx[k] * L->out_stride[k];                                                    \
                co -= idx[k] * L->cs_stride[k];                                                     \
                idx[k] = 0;                                                                         \
            }                                                                                       \
        }                                                                                           \
        if (streamed) kx_fence();                                                                   \
    }                                                                                               \
    int NAME(const kx_job *jobs, int njobs, int64_t R, int interleaved, int transpose,              \
             int nthreads) {                                                                        \
        int64_t rows[KX_MAXJOBS], total = 0;                                                        \
        if (njobs < 1 || njobs > KX_MAXJOBS || R % 2 != 0) return -1;                               \
        for (int j = 0; j < njobs; j++) {                                                           \
            if (jobs[j].layout->ndim > KX_MAXDIM || R > jobs[j].D) return -1;                       \
            rows[j] = kx_rows(jobs[j].layout);                                                      \
            total += rows[j];                                                                       \
        }                                                                                           \
        if (total == 0) return 0; /* empty: nothing to do (and no division by a zero extent) */     \
        const CT sg = transpose ? (CT)-1 : (CT)1;                                                   \
        _Pragma("omp parallel num_threads(nthreads)") {                                             \
            const int64_t nt = omp_get_num_threads(), tid = omp_get_thread_num();                   \
            const int64_t g0 = total * tid / nt, g1 = total * (tid + 1) / nt;                       \
            int64_t first = 0; /* global index of job j's first row */                              \
            for (int j = 0; j < njobs; j++) {                                                       \
                const int64_t lo = g0 > first ? g0 - first : 0;                                     \
                const int64_t hi = g1 - first < rows[j] ? g1 - first : rows[j];                     \
                if (lo < hi) NAME##_range(&jobs[j], R, interleaved, sg, lo, hi);                    \
                first += rows[j];                                                                   \
            }                                                                                       \
        }                                                                                           \
        return 0;                                                                                   \
    }

static inline float kx_bf16_round(float f) { return kx_bf16_load(kx_bf16_store(f)); }

KX_DEFINE(kx_rope_float32, float, float, KX_SAME, KX_SAME, kx_can_stream_f32, kx_stream_f32, KX_SAME)
KX_DEFINE(kx_rope_float64, double, double, KX_SAME, KX_SAME, KX_NO_STREAM_CAN, KX_NO_STREAM, KX_SAME)
KX_DEFINE(kx_rope_bfloat16, uint16_t, float, kx_bf16_load, kx_bf16_store, KX_NO_STREAM_CAN, KX_NO_STREAM, KX_SAME)
KX_DEFINE(kx_rope_bfloat16_products, uint16_t, float, kx_bf16_load, kx_bf16_store, KX_NO_STREAM_CAN, KX_NO_STREAM,
          kx_bf16_round)

#if defined(__FLT16_MAX__)
#define KX_F16_LOAD(v) ((float)(v))
#define KX_F16_STORE(v) ((_Float16)(v))
#define KX_F16_ROUND(v) ((float)(_Float16)(v))
KX_DEFINE(kx_rope_float16, _Float16, float, KX_F16_LOAD, KX_F16_STORE, KX_NO_STREAM_CAN, KX_NO_STREAM, KX_SAME)
KX_DEFINE(kx_rope_float16_products, _Float16, float, KX_F16_LOAD, KX_F16_STORE, KX_NO_STREAM_CAN, KX_NO_STREAM,
          KX_F16_ROUND)
#endif
