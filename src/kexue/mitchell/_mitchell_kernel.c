/* Mitchell arithmetic on float32 bit patterns: element-wise product and matrix product.
 *
 * Policy and results are those of kexue/mitchell/reference.py, bit for bit (tested). The
 * vectorisable fast path covers normal operands and normal results:
 *     bits(a (x) b) = (|a| + |b| - 0x3F800000) | sign,   |.| the bit pattern without sign,
 * which is the article's C++ line. Everything else (subnormal operands, results below the normal
 * range, non-finite values) is flagged per block and recomputed by the exact scalar routine.
 * Overflow saturates to infinity in the fast path itself.
 *
 * Corrections (mode 1: a constant, mode 2: an 8 x 8 table indexed by the top three mantissa
 * bits of each operand) are integers added to the sum, in units of 2^-23.
 *
 * Matrix product: C[i, j] = sum_k a[i, k] (x) b[k, j], accumulated in float32 in increasing k,
 * one rounding per addition (compiled with -ffp-contract=off; there is no multiplication).
 * Rows of C are shared among OpenMP threads.
 */
#include <stdint.h>
#include <string.h>

#define ONE 0x3F800000u
#define INF 0x7F800000u
#define MINN 0x00800000u
#define MASK 0x007FFFFFu
#define QNAN 0x7FC00000u
#define BLOCK 256

static inline uint32_t compose(int64_t n, int64_t f) {
    int64_t e = n + 127;
    if (e >= 255) return INF;
    if (e >= 1) return (uint32_t)((e << 23) | f);
    int64_t shift = 1 - e;
    if (shift > 24) return 0;
    int64_t significand = (1LL << 23) + f;
    int64_t q = significand >> shift, r = significand & ((1LL << shift) - 1), half = 1LL << (shift - 1);
    if (r > half || (r == half && (q & 1))) q += 1;
    return (uint32_t)q;
}

static inline void decompose(uint32_t u, int64_t *n, int64_t *f) {
    if (u >= MINN) { *n = (int64_t)(u >> 23) - 127; *f = u & MASK; return; }
    int p = 31 - __builtin_clz(u);  /* u > 0: top bit of the subnormal mantissa */
    *n = -126 - 23 + p;
    *f = ((int64_t)u - (1LL << p)) << (23 - p);
}

static inline int64_t correction(int mode, int32_t c, const int32_t *table, int64_t fa, int64_t fb) {
    if (mode == 1) return c;
    if (mode == 2) return table[(fa >> 20) * 8 + (fb >> 20)];
    return 0;
}

static uint32_t exact_mul(uint32_t a, uint32_t b, int mode, int32_t c, const int32_t *table) {
    uint32_t sign = (a ^ b) & 0x80000000u, ua = a & 0x7FFFFFFFu, ub = b & 0x7FFFFFFFu;
    if (ua > INF || ub > INF) return QNAN;
    if (ua == INF || ub == INF) return (ua == 0 || ub == 0) ? QNAN : (sign | INF);
    if (ua == 0 || ub == 0) return sign;
    int64_t na, fa, nb, fb;
    decompose(ua, &na, &fa);
    decompose(ub, &nb, &fb);
    int64_t n = na + nb, f = fa + fb + correction(mode, c, table, fa, fb);
    n += f >> 23;
    f &= MASK;
    return sign | compose(n, f);
}

/* The fast path for one pair of bit patterns (normal operands, normal or overflowing result). */
static inline __attribute__((always_inline)) uint32_t fast1(uint32_t x, uint32_t y, int mode, int32_t c, const int32_t *table) {
    uint32_t ux = x & 0x7FFFFFFFu, uy = y & 0x7FFFFFFFu;
    uint32_t add = mode == 0 ? 0u : (mode == 1 ? (uint32_t)c : (uint32_t)table[((ux >> 20) & 7) * 8 + ((uy >> 20) & 7)]);
    uint32_t s = ux + uy + add;
    uint32_t r = s >= INF + ONE ? INF : s - ONE;
    r = (ux == 0) | (uy == 0) ? 0u : r;
    return r | ((x ^ y) & 0x80000000u);
}

/* Whether the pair needs the exact routine: a subnormal or non-finite operand, or a non-zero
 * product below the normal range (the correction is at least 0, so testing without it is safe:
 * it only flags more). */
static inline __attribute__((always_inline)) uint32_t odd1(uint32_t x, uint32_t y) {
    uint32_t ux = x & 0x7FFFFFFFu, uy = y & 0x7FFFFFFFu;
    uint32_t bad = ((ux - 1u) < (MINN - 1u)) | (ux >= INF) | ((uy - 1u) < (MINN - 1u)) | (uy >= INF);
    uint32_t nonzero = (ux != 0) & (uy != 0);
    return bad | ((ux + uy < ONE + MINN) & nonzero);
}

static __attribute__((noinline)) void fix_block(const uint32_t *a, uint32_t a0, const uint32_t *b, uint32_t *out, int64_t len,
                                                int mode, int32_t c, const int32_t *table) {
    for (int64_t i = 0; i < len; i++) out[i] = exact_mul(a ? a[i] : a0, b[i], mode, c, table);
}

int kx_mitchell_mul_f32(const uint32_t *a, const uint32_t *b, uint32_t *out, int64_t n, int mode, int32_t c,
                        const int32_t *table, int threads) {
    int64_t blocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for num_threads(threads) schedule(static) if (n > 65536)
    for (int64_t k = 0; k < blocks; k++) {
        int64_t start = k * BLOCK, len = n - start < BLOCK ? n - start : BLOCK;
        const uint32_t *restrict pa = a + start, *restrict pb = b + start;
        uint32_t *restrict po = out + start;
        uint32_t odd = 0;
        if (mode == 0) {
            for (int64_t i = 0; i < len; i++) po[i] = fast1(pa[i], pb[i], 0, 0, table);
        } else if (mode == 1) {
            for (int64_t i = 0; i < len; i++) po[i] = fast1(pa[i], pb[i], 1, c, table);
        } else {
            for (int64_t i = 0; i < len; i++) po[i] = fast1(pa[i], pb[i], 2, c, table);
        }
        for (int64_t i = 0; i < len; i++) odd |= odd1(pa[i], pb[i]);
        if (odd) fix_block(pa, 0, pb, po, len, mode, c, table);
    }
    return 0;
}

/* C (M x N, float32, overwritten) = A (M x K) (x) B (K x N), all row-major contiguous. */
int kx_mitchell_matmul_f32(const uint32_t *A, const uint32_t *B, float *C, int64_t M, int64_t K, int64_t N, int mode,
                           int32_t c, const int32_t *table, int threads) {
#pragma omp parallel num_threads(threads)
    {
        uint32_t prod[BLOCK];
#pragma omp for schedule(static)
        for (int64_t i = 0; i < M; i++) {
            float *row = C + i * N;
            memset(row, 0, (size_t)N * sizeof(float));
            for (int64_t k = 0; k < K; k++) {
                uint32_t a = A[i * K + k];
                if ((a & 0x7FFFFFFFu) == 0) continue; /* finite b: every product is +-0, adding it changes nothing */
                const uint32_t *brow = B + k * N;
                for (int64_t j0 = 0; j0 < N; j0 += BLOCK) {
                    int64_t len = N - j0 < BLOCK ? N - j0 : BLOCK;
                    const uint32_t *restrict pb = brow + j0;
                    uint32_t odd = 0;
                    if (mode == 0) {
                        for (int64_t j = 0; j < len; j++) prod[j] = fast1(a, pb[j], 0, 0, table);
                    } else if (mode == 1) {
                        for (int64_t j = 0; j < len; j++) prod[j] = fast1(a, pb[j], 1, c, table);
                    } else {
                        for (int64_t j = 0; j < len; j++) prod[j] = fast1(a, pb[j], 2, c, table);
                    }
                    for (int64_t j = 0; j < len; j++) odd |= odd1(a, pb[j]);
                    if (odd) fix_block(NULL, a, pb, prod, len, mode, c, table);
                    float *acc = row + j0;
                    const float *p = (const float *)prod;
                    for (int64_t j = 0; j < len; j++) acc[j] += p[j];
                }
            }
        }
    }
    return 0;
}
