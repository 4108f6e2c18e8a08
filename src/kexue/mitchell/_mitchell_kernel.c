/* Mitchell arithmetic on float32 bit patterns: element-wise product and matrix product.
 *
 * Policy and results are those of kexue/mitchell/reference.py, bit for bit (tested). The
 * vectorisable fast path covers normal operands and normal results:
 *     bits(a (x) b) = (|a| + |b| - 0x3F800000) | sign,   |.| the bit pattern without sign,
 * which is the article's C++ line. Everything else (subnormal operands, results below the normal
 * range, non-finite values) is flagged per block and recomputed by the exact scalar routine, so
 * every input (infinities and NaN included) is handled here: the caller never inspects values.
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
#include <stdlib.h>
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
        /* one pass: the product and the "needs the exact routine" flag together (memory-bound) */
        if (mode == 0) {
            for (int64_t i = 0; i < len; i++) { po[i] = fast1(pa[i], pb[i], 0, 0, table); odd |= odd1(pa[i], pb[i]); }
        } else if (mode == 1) {
            for (int64_t i = 0; i < len; i++) { po[i] = fast1(pa[i], pb[i], 1, c, table); odd |= odd1(pa[i], pb[i]); }
        } else {
            for (int64_t i = 0; i < len; i++) { po[i] = fast1(pa[i], pb[i], 2, c, table); odd |= odd1(pa[i], pb[i]); }
        }
        if (odd) fix_block(pa, 0, pb, po, len, mode, c, table);
    }
    return 0;
}

/* ---- matrix product -------------------------------------------------------------------------
 *
 * C[i, j] = sum_k a[i, k] (x) b[k, j], summed in float32 in increasing k with one rounding per
 * addition. Two paths give the same bits:
 *
 * generic (any operands; edges of the tiled path): for each row and k, the products of a[i, k]
 *   with a stretch of row k of B by fast1 (the exact routine for a stretch that needs it), added
 *   into C. Per term: about 12 vector instructions (|.|, add, compare/select overflow, zero tests,
 *   sign, the "odd" test, a store and a reload of the product, the float add).
 *
 * tiled (AVX-512 or AVX2): C is cut into register tiles of R x W (4 x 64 floats with AVX-512:
 *   16 zmm accumulators; 4 x 32 with AVX2), k into blocks of KB. A tile of a k-block runs the
 *   fast path only when every operand in it is a non-zero normal number, the smallest magnitudes
 *   cannot underflow (min|a| + min|b| >= 1.0 + the smallest normal) and the largest cannot
 *   overflow, checked once per tile from per-block minima and maxima, so no per-term test is needed:
 *       s = (|a| - 0x3F800000) + b     (b with its sign bit: |a| + |b| - ONE < 2^31 cannot carry into it)
 *       acc = fma(s, ±1.0, acc)        (a's sign applied exactly, one rounding: the bits of acc ± s,
 *                                       accumulated in increasing k)
 *   i.e. 2 vector instructions and one load per 16 (AVX-512) or 8 (AVX2) terms, against one FMA
 *   for BLAS (an integer add and an FMA on different ports); |a| - ONE and ±1.0 (a's sign) are
 *   unpacked once per call (a constant correction is folded
 *   into |a| - ONE) and B is copied into contiguous panels. A tile whose operands could overflow
 *   (max|a| + max|b| >= INF + ONE) runs the generic path, which saturates. Any other tile runs the generic path over the
 *   same k-block, from the same partial sums, so the order of additions never changes.
 */

/* C[i, j0:j1] += sum_{k0 <= k < k1} a[i, k] (x) b[k, j0:j1] for rows i0 <= i < i1 (generic path).
 * finite[k]: row k of B holds only finite numbers (NULL: unknown). A zero a[i, k] against such a row
 * gives +-0 products, and adding +-0 to a sum that started at +0 changes nothing: skipped. Against a
 * row with an infinity or a NaN the products are NaN, so they are computed. */
static void generic_tile(const uint32_t *A, const uint32_t *B, float *C, int64_t K, int64_t N, int64_t i0, int64_t i1,
                         int64_t j0, int64_t j1, int64_t k0, int64_t k1, int mode, int32_t c, const int32_t *table,
                         uint32_t *prod, const uint8_t *finite) {
    for (int64_t i = i0; i < i1; i++) {
        float *row = C + i * N;
        for (int64_t k = k0; k < k1; k++) {
            uint32_t a = A[i * K + k];
            if ((a & 0x7FFFFFFFu) == 0 && finite && finite[k]) continue;
            const uint32_t *brow = B + k * N;
            for (int64_t jb = j0; jb < j1; jb += BLOCK) {
                int64_t len = j1 - jb < BLOCK ? j1 - jb : BLOCK;
                const uint32_t *restrict pb = brow + jb;
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
                float *acc = row + jb;
                const float *p = (const float *)prod;
                for (int64_t j = 0; j < len; j++) acc[j] += p[j];
            }
        }
    }
}

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#include <stdlib.h>
#define TILE_R 4
#ifndef KB
#define KB 256
#endif
#ifndef RB
#define RB 16 /* row tiles per work item */
#endif
#if defined(__AVX512F__)
#define LANES 16
typedef __m512i vint;
typedef __m512 vflt;
#define VLOAD(p) _mm512_loadu_si512((const void *)(p))
#define VLOADF(p) _mm512_loadu_ps(p)
#define VSTOREF(p, v) _mm512_storeu_ps(p, v)
#define VSET1(x) _mm512_set1_epi32((int)(x))
#define VADD(a, b) _mm512_add_epi32(a, b)
/* acc + p·(±1): the FMA only applies a's sign (exact), then rounds once: the same bits as acc ± p */
#define VSIGNADD(p, sa, acc) _mm512_fmadd_ps(p, sa, acc)
#define VFADD(a, b) _mm512_add_ps(a, b)
#define VCASTF(v) _mm512_castsi512_ps(v)
#else
#define LANES 8
typedef __m256i vint;
typedef __m256 vflt;
#define VLOAD(p) _mm256_loadu_si256((const __m256i *)(p))
#define VLOADF(p) _mm256_loadu_ps(p)
#define VSTOREF(p, v) _mm256_storeu_ps(p, v)
#define VSET1(x) _mm256_set1_epi32((int)(x))
#define VADD(a, b) _mm256_add_epi32(a, b)
#if defined(__FMA__)
#define VSIGNADD(p, sa, acc) _mm256_fmadd_ps(p, sa, acc)
#else
#define VSIGNADD(p, sa, acc) _mm256_add_ps(acc, _mm256_xor_ps(p, _mm256_and_ps(sa, _mm256_set1_ps(-0.0f))))
#endif
#define VFADD(a, b) _mm256_add_ps(a, b)
#define VCASTF(v) _mm256_castsi256_ps(v)
#endif
#define TILE_V 4               /* vectors per tile row */
#define TILE_W (TILE_V * LANES) /* columns per tile */

/* The fast path of one R x W tile over a k-block of n terms: accumulators in registers, C read and
 * written once. al/as: the tile's packed |a| - ONE (+ a constant correction) and sign of a (n x R,
 * k-major; the sign as ±1.0f); bp: the panel's packed bit patterns of b (n x W, k-major, contiguous). In such a tile
 * no product overflows or underflows, so |a| + |b| - ONE stays in [MINN, INF) and adding b's sign
 * bit on top of it cannot carry: the sum already holds |a (x) b| and sign(b). */
static inline void fast_tile(const uint32_t *al_p, const uint32_t *as_p, const uint32_t *bp, float *C, int64_t N, int64_t i0,
                             int64_t j0, int64_t n) {
    vflt acc[TILE_R][TILE_V];
    for (int r = 0; r < TILE_R; r++)
        for (int v = 0; v < TILE_V; v++) acc[r][v] = VLOADF(C + (i0 + r) * N + j0 + v * LANES);
    for (int64_t k = 0; k < n; k++) {
        vint b[TILE_V];
        for (int v = 0; v < TILE_V; v++) b[v] = VLOAD(bp + k * TILE_W + v * LANES);
        for (int r = 0; r < TILE_R; r++) {
            vint al = VSET1(al_p[k * TILE_R + r]);
            vflt sa = VCASTF(VSET1(as_p[k * TILE_R + r]));
            for (int v = 0; v < TILE_V; v++) acc[r][v] = VSIGNADD(VCASTF(VADD(al, b[v])), sa, acc[r][v]);
        }
    }
    for (int r = 0; r < TILE_R; r++)
        for (int v = 0; v < TILE_V; v++) VSTOREF(C + (i0 + r) * N + j0 + v * LANES, acc[r][v]);
}

/* Scratch memory for the packed operands, kept per calling thread between calls: fresh pages
 * from the system would be faulted in on every call (several ms at 512^3, more than the product). */
static __thread uint32_t *scratch = NULL;
static __thread size_t scratch_words = 0;

static uint32_t *scratch_get(size_t words) {
    if (words > scratch_words) {
        free(scratch);
        scratch = malloc(words * 4);
        scratch_words = scratch ? words : 0;
    }
    return scratch;
}

/* Per-block minimum magnitude of the operands and whether all are non-zero normal numbers. */
static inline int normal_mag(uint32_t u) { return u >= MINN && u < INF; }

static int tiled_matmul(const uint32_t *A, const uint32_t *B, float *C, int64_t batch, int64_t M, int64_t K, int64_t N,
                        int mode, int32_t c, int threads, const uint8_t *finite) {
    int64_t kblocks = (K + KB - 1) / KB, rtiles = M / TILE_R, ctiles = N / TILE_W;
    /* packed copies: B's column panels per k-block (batch, k-block, panel, KB, W) and A's row tiles
     * (batch, tile, K, R), so the tiles read contiguous memory */
    size_t nb = (size_t)batch * kblocks * ctiles * KB * TILE_W, na = (size_t)batch * rtiles * K * TILE_R;
    uint64_t add = mode == 1 ? (uint32_t)c : 0u; /* a constant correction joins |a| - ONE */
    /* and per (batch, row tile, k-block) and (batch, k-block, column tile): min and max |.|, min 0 when
     * some operand is zero, subnormal or not finite */
    size_t nam = (size_t)batch * (rtiles + 1) * kblocks, nbm = (size_t)batch * kblocks * (ctiles + 1);
    uint32_t *BP = scratch_get(nb + 2 * na + 2 * nam + 2 * nbm);
    if (!BP) return -1;
    uint32_t *AL = BP + nb, *AS = AL + na, *amin = AS + na, *bmin = amin + nam, *amax = bmin + nbm, *bmax = amax + nam;
    /* one thread below ~32M terms (a few ms): a team of threads only pays off above that, and on
     * shared, oversubscribed cores its barriers can cost a time slice each */
    int64_t big = batch * M * K * N > (1LL << 25);
#pragma omp parallel num_threads(threads) if (big)
    {
#pragma omp for schedule(static) collapse(2) nowait
        for (int64_t b = 0; b < batch; b++)
            for (int64_t k = 0; k < K; k++) {
                const uint32_t *src = B + (b * K + k) * N;
                for (int64_t ct = 0; ct < ctiles; ct++) {
                    size_t at = (((size_t)(b * kblocks + k / KB) * ctiles + ct) * KB + k % KB) * TILE_W;
                    memcpy(BP + at, src + ct * TILE_W, TILE_W * sizeof(uint32_t));
                }
            }
#pragma omp for schedule(static) collapse(2) nowait
        for (int64_t b = 0; b < batch; b++)
            for (int64_t t = 0; t < rtiles; t++)
                for (int64_t k = 0; k < K; k++)
                    for (int64_t r = 0; r < TILE_R; r++) {
                        uint32_t x = A[(b * M + t * TILE_R + r) * K + k];
                        size_t at = ((size_t)(b * rtiles + t) * K + k) * TILE_R + r;
                        AL[at] = (x & 0x7FFFFFFFu) - ONE + (uint32_t)add;
                        AS[at] = (x & 0x80000000u) | ONE; /* ±1.0f */
                    }
#pragma omp for schedule(static) collapse(2) nowait
        for (int64_t b = 0; b < batch; b++)
            for (int64_t t = 0; t < rtiles; t++)
                for (int64_t kb = 0; kb < kblocks; kb++) {
                    uint32_t lo = INF, hi = 0;
                    for (int64_t i = t * TILE_R; i < (t + 1) * TILE_R; i++)
                        for (int64_t k = kb * KB; k < K && k < (kb + 1) * KB; k++) {
                            uint32_t u = A[(b * M + i) * K + k] & 0x7FFFFFFFu;
                            lo = normal_mag(u) ? (u < lo ? u : lo) : 0;
                            hi = u > hi ? u : hi;
                            if (!lo) break;
                        }
                    amin[(b * (rtiles + 1) + t) * kblocks + kb] = lo;
                    amax[(b * (rtiles + 1) + t) * kblocks + kb] = hi;
                }
#pragma omp for schedule(static) collapse(2)
        for (int64_t b = 0; b < batch; b++)
            for (int64_t kb = 0; kb < kblocks; kb++)
                for (int64_t t = 0; t < ctiles; t++) {
                    uint32_t lo = INF, hi = 0;
                    for (int64_t k = kb * KB; k < K && k < (kb + 1) * KB && lo; k++)
                        for (int64_t j = t * TILE_W; j < (t + 1) * TILE_W; j++) {
                            uint32_t u = B[(b * K + k) * N + j] & 0x7FFFFFFFu;
                            lo = normal_mag(u) ? (u < lo ? u : lo) : 0;
                            hi = u > hi ? u : hi;
                            if (!lo) break;
                        }
                    bmin[(b * kblocks + kb) * (ctiles + 1) + t] = lo;
                    bmax[(b * kblocks + kb) * (ctiles + 1) + t] = hi;
                }
        uint32_t prod[BLOCK];
        /* (the packing and scans above are independent: one barrier, after the last) */
        /* work items: (batch, block of RB row tiles); a k-block of a column panel of B (KB x W) is then
         * reused from cache by the RB tiles; the leftover rows (M % R) are one more item per batch */
        int64_t rblocks = (rtiles + RB - 1) / RB;
#pragma omp for schedule(dynamic, 1)
        for (int64_t w = 0; w < batch * (rblocks + 1); w++) {
            int64_t b = w / (rblocks + 1), rb = w % (rblocks + 1);
            const uint32_t *Ab = A + b * M * K, *Bb = B + b * K * N;
            float *Cb = C + b * M * N;
            if (rb == rblocks) { /* leftover rows */
                int64_t i0 = rtiles * TILE_R;
                if (i0 < M) {
                    memset(Cb + i0 * N, 0, (size_t)(M - i0) * N * sizeof(float));
                    generic_tile(Ab, Bb, Cb, K, N, i0, M, 0, N, 0, K, mode, c, NULL, prod, finite + b * K);
                }
                continue;
            }
            int64_t t0 = rb * RB, t1 = t0 + RB < rtiles ? t0 + RB : rtiles;
            memset(Cb + t0 * TILE_R * N, 0, (size_t)(t1 - t0) * TILE_R * N * sizeof(float));
            for (int64_t kb = 0; kb < kblocks; kb++) {
                int64_t k0 = kb * KB, k1 = k0 + KB < K ? k0 + KB : K;
                for (int64_t ct = 0; ct < ctiles; ct++) {
                    uint64_t blo = bmin[(b * kblocks + kb) * (ctiles + 1) + ct], bhi = bmax[(b * kblocks + kb) * (ctiles + 1) + ct];
                    for (int64_t t = t0; t < t1; t++) {
                        uint64_t alo = amin[(b * (rtiles + 1) + t) * kblocks + kb], ahi = amax[(b * (rtiles + 1) + t) * kblocks + kb];
                        int64_t i0 = t * TILE_R;
                        /* no zero/subnormal/non-finite operand, no underflow, no overflow (correction included) */
                        if (alo && blo && alo + blo >= (uint64_t)ONE + MINN && ahi + bhi + add < (uint64_t)INF + ONE) {
                            size_t pa = ((size_t)(b * rtiles + t) * K + k0) * TILE_R;
                            size_t pb = ((size_t)(b * kblocks + kb) * ctiles + ct) * KB * TILE_W;
                            fast_tile(AL + pa, AS + pa, BP + pb, Cb, N, i0, ct * TILE_W, k1 - k0);
                        }
                        else
                            generic_tile(Ab, Bb, Cb, K, N, i0, i0 + TILE_R, ct * TILE_W, (ct + 1) * TILE_W, k0, k1, mode, c, NULL, prod, finite + b * K);
                    }
                }
                if (ctiles * TILE_W < N)
                    generic_tile(Ab, Bb, Cb, K, N, t0 * TILE_R, t1 * TILE_R, ctiles * TILE_W, N, k0, k1, mode, c, NULL, prod, finite + b * K);
            }
        }
    }
    return 0;
}
#endif

/* C[b] (M x N, float32, overwritten) = A[b] (M x K) (x) B[b] (K x N) for b < batch, all row-major
 * contiguous. Plain and constant-corrected products of enough rows and columns take the tiled path;
 * the piecewise table (indexed by both operands) and small shapes the generic one. */
int kx_mitchell_bmm_f32(const uint32_t *A, const uint32_t *B, float *C, int64_t batch, int64_t M, int64_t K, int64_t N,
                        int mode, int32_t c, const int32_t *table, int threads) {
    /* finite[b * K + k]: row k of B[b] has no infinity and no NaN (lets zeros of A be skipped) */
    uint8_t *finite = malloc((size_t)(batch * K > 0 ? batch * K : 1));
    if (!finite) return -1;
    for (int64_t r = 0; r < batch * K; r++) {
        uint32_t odd = 0;
        for (int64_t j = 0; j < N; j++) odd |= (B[r * N + j] & 0x7FFFFFFFu) >= INF;
        finite[r] = !odd;
    }
#if defined(__AVX512F__) || defined(__AVX2__)
    if (mode != 2 && M >= TILE_R && N >= TILE_W && K > 0 && tiled_matmul(A, B, C, batch, M, K, N, mode, c, threads, finite) == 0) {
        free(finite);
        return 0;
    }
#endif
    /* small products run on one thread: waking a team costs more than it saves */
#pragma omp parallel num_threads(threads) if (batch * M * K * N > (1LL << 21))
    {
        uint32_t prod[BLOCK];
#pragma omp for schedule(static)
        for (int64_t r = 0; r < batch * M; r++) {
            int64_t b = r / M, i = r % M;
            float *Cb = C + b * M * N;
            memset(Cb + i * N, 0, (size_t)N * sizeof(float));
            generic_tile(A + b * M * K, B + b * K * N, Cb, K, N, i, i + 1, 0, N, 0, K, mode, c, table, prod, finite + b * K);
        }
    }
    free(finite);
    return 0;
}

/* C (M x N, float32, overwritten) = A (M x K) (x) B (K x N), all row-major contiguous. */
int kx_mitchell_matmul_f32(const uint32_t *A, const uint32_t *B, float *C, int64_t M, int64_t K, int64_t N, int mode,
                           int32_t c, const int32_t *table, int threads) {
    return kx_mitchell_bmm_f32(A, B, C, 1, M, K, N, mode, c, table, threads);
}
