/* Bit-packing kernels for compress.codec: N b-bit codes (b = 1..8) <-> ceil(N*b/8) bytes.
 *
 * Wire format (must match compress.codec.pack_numpy): big-endian bit order, the first code in
 * the high bits of the first byte. Every group of 8 codes is exactly b bytes: the 8b-bit
 * big-endian number c0 << 7b | c1 << 6b | ... | c7.
 *
 * Two implementations of the bulk loop, chosen at compile time: AVX2 (32 codes per step) under
 * __AVX2__, else portable SWAR on uint64 (8 codes = one group per step). Both hand the last codes
 * to the scalar group code, which never touches a byte outside the buffers; the vector loops only
 * run while their widest load/store stays inside. Each kernel is an always-inline function of a
 * compile-time constant b, so shifts and shuffle masks are immediates.
 *
 * Module functions (METH_FASTCALL):
 *   pack(codes, bits) -> bytes, or NotImplemented when codes is not a C-contiguous buffer of
 *       unsigned bytes or bits is not an int in 1..8 (the Python caller then converts / raises).
 *       ValueError "a code does not fit in {bits} bits" when any code >= 2^bits (checked over
 *       every code by OR-accumulation inside the kernel).
 *   unpack(payload, bits, n) -> a new 1-D uint8 numpy array of the n codes, or NotImplemented when
 *       bits is not an int in 1..8 or n not an int >= 0 (the Python caller raises); ValueError unless
 *       the contiguous buffer payload has exactly ceil(n*bits/8) bytes.
 *   ISA: "avx2" or "scalar".
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#define NPY_NO_DEPRECATED_API NPY_1_7_API_VERSION
#include <numpy/arrayobject.h>
#include <stdint.h>
#include <string.h>
#ifdef __AVX2__
#include <immintrin.h>
#endif

#define INLINE static inline __attribute__((always_inline))
#define GIL_FREE_CODES ((Py_ssize_t)1 << 20) /* release the GIL above this many codes */

/* ------------------------------------------------------------------------------------------ */
/* Scalar: one group of 8 codes <-> b bytes.                                                   */

INLINE uint64_t load_le64(const uint8_t *p) {
    uint64_t x;
    memcpy(&x, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

INLINE void store_le64(uint8_t *p, uint64_t x) {
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    memcpy(p, &x, 8);
}

INLINE uint64_t load_be64(const uint8_t *p) {
    uint64_t x;
    memcpy(&x, p, 8);
#if __BYTE_ORDER__ != __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    return x;
}

INLINE void store_be64(uint8_t *p, uint64_t x) {
#if __BYTE_ORDER__ != __ORDER_BIG_ENDIAN__
    x = __builtin_bswap64(x);
#endif
    memcpy(p, &x, 8);
}

/* 8 codes (byte i of w = code i) -> 8b-bit number, code 0 highest. Codes must be < 2^b. */
INLINE uint64_t swar_merge(uint64_t w, int b) {
    w = ((w & 0x00FF00FF00FF00FFull) << b) | ((w >> 8) & 0x00FF00FF00FF00FFull);
    w = ((w & 0x0000FFFF0000FFFFull) << (2 * b)) | ((w >> 16) & 0x0000FFFF0000FFFFull);
    return ((w & 0xFFFFFFFFull) << (4 * b)) | (w >> 32);
}

/* Inverse of swar_merge: 8b-bit number -> 8 codes, byte i = code i. */
INLINE uint64_t swar_split(uint64_t y, int b) {
    const uint64_t m4 = (1ull << (4 * b)) - 1;
    const uint64_t m2 = ((1ull << (2 * b)) - 1) * 0x0000000100000001ull;
    const uint64_t m1 = ((1ull << b) - 1) * 0x0001000100010001ull;
    y = (y >> (4 * b)) | ((y & m4) << 32);
    y = ((y >> (2 * b)) & m2) | ((y & m2) << 16);
    return ((y >> b) & m1) | ((y & m1) << 8);
}

/* Pack codes [i, n) into out starting at byte i*b/8 (i a multiple of 8); returns OR of codes. */
INLINE uint8_t pack_scalar_from(const uint8_t *in, Py_ssize_t i, Py_ssize_t n, uint8_t *out,
                                Py_ssize_t out_len, int b) {
    uint64_t acc = 0;
    Py_ssize_t o = i / 8 * b;
    for (; i + 8 <= n; i += 8, o += b) {
        uint64_t w = load_le64(in + i);
        acc |= w;
        uint64_t y = swar_merge(w, b);
        if (o + 8 <= out_len) { /* 8 bytes, the first b valid: the next group overwrites the rest */
            store_be64(out + o, y << (64 - 8 * b));
        } else {
            for (int k = 0; k < b; k++)
                out[o + k] = (uint8_t)(y >> (8 * (b - 1 - k)));
        }
    }
    if (i < n) { /* partial group: pad with zero codes, write only its ceil(r*b/8) bytes */
        uint8_t tmp[8] = {0};
        Py_ssize_t r = n - i;
        memcpy(tmp, in + i, (size_t)r);
        uint64_t w = load_le64(tmp);
        acc |= w;
        uint64_t y = swar_merge(w, b);
        Py_ssize_t nbytes = (r * b + 7) / 8;
        for (Py_ssize_t k = 0; k < nbytes; k++)
            out[o + k] = (uint8_t)(y >> (8 * (b - 1 - k)));
    }
    acc |= acc >> 32;
    acc |= acc >> 16;
    acc |= acc >> 8;
    return (uint8_t)acc;
}

/* Unpack codes [i, n) from in (byte i*b/8 on, i a multiple of 8) into out. */
INLINE void unpack_scalar_from(const uint8_t *in, Py_ssize_t in_len, Py_ssize_t i, Py_ssize_t n,
                               uint8_t *out, int b) {
    Py_ssize_t o = i / 8 * b;
    for (; i + 8 <= n; i += 8, o += b) {
        uint64_t y;
        if (o + 8 <= in_len) {
            y = load_be64(in + o) >> (64 - 8 * b);
        } else {
            y = 0;
            for (int k = 0; k < b; k++)
                y = (y << 8) | in[o + k];
        }
        store_le64(out + i, swar_split(y, b));
    }
    if (i < n) { /* partial group: its bytes are the high bytes of the group number */
        Py_ssize_t r = n - i;
        Py_ssize_t nbytes = in_len - o;
        uint64_t y = 0;
        for (int k = 0; k < b; k++)
            y = (y << 8) | (k < nbytes ? in[o + k] : 0);
        uint8_t tmp[8];
        store_le64(tmp, swar_split(y, b));
        memcpy(out + i, tmp, (size_t)r);
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Bulk loops and the per-b kernels pack_b / unpack_b.                                          */

#ifdef __AVX2__
#define ISA_NAME "avx2"

/* Number of steps k = 0, 1, ... whose access [k * stride, k * stride + need) stays within avail. */
INLINE Py_ssize_t steps_within(Py_ssize_t avail, Py_ssize_t need, Py_ssize_t stride) {
    return avail < need ? 0 : (avail - need) / stride + 1;
}

INLINE Py_ssize_t min_ss(Py_ssize_t a, Py_ssize_t b) { return a < b ? a : b; }

INLINE int acc_fits(__m256i acc, int b) {
    return _mm256_testz_si256(acc, _mm256_set1_epi8((char)((0xFF << b) & 0xFF)));
}

/* A 4-byte store that GCC's SLP vectoriser cannot merge with its neighbours (it would gather the
 * movemask results into an xmm register with vmovd/vpinsrd: 20 % slower). */
INLINE void store32(uint8_t *p, uint32_t x) {
    memcpy(p, &x, 4);
    __asm__ volatile("" ::: "memory");
}

/* --- pack: each returns the number of codes done (a multiple of 32) and ORs the codes into *acc.
 * Steps whose widest load or store would pass the end are left to the scalar code. */

/* b = 1: byte-reverse each 8-code group (shuffle), bit 0 -> bit 7 (add 0x7F: 0 -> 0x7F,
 * 1 -> 0x80), movemask: 32 codes -> 4 bytes. The range check ORs the shuffled codes. */
INLINE uint32_t pack32_1(const uint8_t *in, __m256i *acc) {
    const __m256i rev = _mm256_setr_epi8(7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8,
                                         7, 6, 5, 4, 3, 2, 1, 0, 15, 14, 13, 12, 11, 10, 9, 8);
    __m256i v = _mm256_shuffle_epi8(_mm256_loadu_si256((const __m256i *)in), rev);
    *acc = _mm256_or_si256(*acc, v);
    return (uint32_t)_mm256_movemask_epi8(_mm256_add_epi8(v, _mm256_set1_epi8(0x7F)));
}

INLINE Py_ssize_t pack_bulk_1(const uint8_t *in, Py_ssize_t n, uint8_t *out, __m256i *acc) {
    __m256i a0 = *acc, a1 = _mm256_setzero_si256();
    Py_ssize_t k = n / 32, j = 0;
    for (; j + 4 <= k; j += 4, in += 128, out += 16) {
        store32(out, pack32_1(in, &a0));
        store32(out + 4, pack32_1(in + 32, &a1));
        store32(out + 8, pack32_1(in + 64, &a0));
        store32(out + 12, pack32_1(in + 96, &a1));
    }
    for (; j < k; j++, in += 32, out += 4)
        store32(out, pack32_1(in, &a0));
    *acc = _mm256_or_si256(a0, a1);
    return k * 32;
}

/* b = 2: code pairs -> 4-bit words (maddubs, weights 4, 1), -> 8-bit dwords (madd, weights 16, 1);
 * 4 vectors packed to bytes and put in order: 128 codes -> 32 bytes. */
INLINE __m256i pairs_2(const uint8_t *in, __m256i *acc) {
    __m256i v = _mm256_loadu_si256((const __m256i *)in);
    *acc = _mm256_or_si256(*acc, v);
    return _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_set1_epi16(0x0104), v), _mm256_set1_epi32(0x00010010));
}

INLINE Py_ssize_t pack_bulk_2(const uint8_t *in, Py_ssize_t n, uint8_t *out, __m256i *acc) {
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    __m256i a0 = *acc, a1 = _mm256_setzero_si256();
    Py_ssize_t k = n / 128;
    for (Py_ssize_t j = 0; j < k; j++, in += 128, out += 32) {
        __m256i v0 = pairs_2(in, &a0), v1 = pairs_2(in + 32, &a1);
        __m256i v2 = pairs_2(in + 64, &a0), v3 = pairs_2(in + 96, &a1);
        __m256i r = _mm256_packus_epi16(_mm256_packus_epi32(v0, v1), _mm256_packus_epi32(v2, v3));
        _mm256_storeu_si256((__m256i *)out, _mm256_permutevar8x32_epi32(r, perm));
    }
    *acc = _mm256_or_si256(a0, a1);
    return k * 128;
}

/* b = 4: code pairs -> bytes (maddubs, weights 16, 1); 2 vectors packed: 64 codes -> 32 bytes. */
INLINE __m256i pairs_4(const uint8_t *in, __m256i *acc) {
    __m256i v = _mm256_loadu_si256((const __m256i *)in);
    *acc = _mm256_or_si256(*acc, v);
    return _mm256_maddubs_epi16(_mm256_set1_epi16(0x0110), v);
}

INLINE Py_ssize_t pack_bulk_4(const uint8_t *in, Py_ssize_t n, uint8_t *out, __m256i *acc) {
    __m256i a0 = *acc, a1 = _mm256_setzero_si256();
    Py_ssize_t k = n / 64;
    for (Py_ssize_t j = 0; j < k; j++, in += 64, out += 32) {
        __m256i r = _mm256_packus_epi16(pairs_4(in, &a0), pairs_4(in + 32, &a1));
        _mm256_storeu_si256((__m256i *)out, _mm256_permute4x64_epi64(r, 0xD8));
    }
    *acc = _mm256_or_si256(a0, a1);
    return k * 64;
}

/* b = 3, 5, 6, 7: code pairs -> 2b-bit words (maddubs; the weights 2^b, 1 are the unsigned operand,
 * so 128 fits), -> 4b-bit dwords (madd, 2^2b, 1), -> one 8b-bit number per qword with code 0
 * highest: for b = 6 the dwords are whole bytes and the shuffle alone joins them; otherwise
 * qword >> 32 | qword << 4b (the stray copy of the high dword lands at bit 4b + 32 >= 8b, above
 * what is kept). The shuffle then writes each qword's low b bytes big-endian: 2b bytes per 128-bit
 * lane, stored at out and out + 2b (16-byte stores: steps stop while 2b + 16 bytes remain). */
INLINE __m256i groups_g(const uint8_t *in, __m256i *acc, int b) {
#define S(j) ((j) < b ? (b - 1 - (j)) : (j) < 2 * b ? (8 + 2 * b - 1 - (j)) : 0x80)
#define S6(j) ((j) < 12 ? 4 * ((j) / 3) + 2 - (j) % 3 : 0x80) /* 3 bytes per dword, big-endian */
#define SH(f) f(0), f(1), f(2), f(3), f(4), f(5), f(6), f(7), f(8), f(9), f(10), f(11), f(12), f(13), \
        f(14), f(15)
    const __m256i sh = b == 6 ? _mm256_setr_epi8(SH(S6), SH(S6)) : _mm256_setr_epi8(SH(S), SH(S));
#undef SH
#undef S6
#undef S
    __m256i v = _mm256_loadu_si256((const __m256i *)in);
    *acc = _mm256_or_si256(*acc, v);
    v = _mm256_maddubs_epi16(_mm256_set1_epi16((short)(0x0100 | (1 << b))), v);
    v = _mm256_madd_epi16(v, _mm256_set1_epi32(0x00010000 | (1 << (2 * b))));
    if (b != 6)
        v = _mm256_or_si256(_mm256_srli_epi64(v, 32), _mm256_slli_epi64(v, 4 * b));
    return _mm256_shuffle_epi8(v, sh);
}

INLINE void store_lanes(uint8_t *out, __m256i r, int b) {
    _mm_storeu_si128((__m128i *)out, _mm256_castsi256_si128(r));
    _mm_storeu_si128((__m128i *)(out + 2 * b), _mm256_extracti128_si256(r, 1));
}

INLINE Py_ssize_t pack_bulk_g(const uint8_t *in, Py_ssize_t n, uint8_t *out, Py_ssize_t out_len,
                              __m256i *acc, int b) {
    __m256i a0 = *acc, a1 = _mm256_setzero_si256();
    Py_ssize_t k = min_ss(n / 32, steps_within(out_len, 2 * b + 16, 4 * b)), j = 0;
    for (; j + 2 <= k; j += 2, in += 64, out += 8 * b) {
        store_lanes(out, groups_g(in, &a0, b), b);
        store_lanes(out + 4 * b, groups_g(in + 32, &a1, b), b);
    }
    if (j < k)
        store_lanes(out, groups_g(in, &a0, b), b);
    *acc = _mm256_or_si256(a0, a1);
    return k * 32;
}

/* --- unpack: each returns the number of codes done (a multiple of 32). */

/* b = 1: broadcast 8 bytes; byte j of the first (second) 32 codes takes input byte j/8 (4 + j/8)
 * (shuffle), keeps bit 7 - j%8 (and), nonzero -> 1 (unsigned min with 1). */
INLINE void unpack64_1(const uint8_t *in, uint8_t *out) {
#define SEL(q) q, q, q, q, q, q, q, q
    const __m256i sel0 = _mm256_setr_epi8(SEL(0), SEL(1), SEL(2), SEL(3));
    const __m256i sel1 = _mm256_setr_epi8(SEL(4), SEL(5), SEL(6), SEL(7));
#undef SEL
    const __m256i bit = _mm256_set1_epi64x((long long)0x0102040810204080ull);
    const __m256i one = _mm256_set1_epi8(1);
    int64_t m;
    memcpy(&m, in, 8);
    __m256i v = _mm256_set1_epi64x(m);
    __m256i x0 = _mm256_and_si256(_mm256_shuffle_epi8(v, sel0), bit);
    __m256i x1 = _mm256_and_si256(_mm256_shuffle_epi8(v, sel1), bit);
    _mm256_storeu_si256((__m256i *)out, _mm256_min_epu8(x0, one));
    _mm256_storeu_si256((__m256i *)(out + 32), _mm256_min_epu8(x1, one));
}

INLINE Py_ssize_t unpack_bulk_1(const uint8_t *in, Py_ssize_t n, uint8_t *out) {
    Py_ssize_t k = n / 64, j = 0;
    for (; j + 2 <= k; j += 2, in += 16, out += 128) {
        unpack64_1(in, out);
        unpack64_1(in + 8, out + 64);
    }
    if (j < k)
        unpack64_1(in, out);
    return k * 64;
}

/* b = 2 and 4: split bytes into high and low fields (shift, mask) and interleave them. */
INLINE void split_interleave(__m256i x, int shift, __m256i mask, __m256i *lo, __m256i *hi) {
    __m256i h = _mm256_and_si256(_mm256_srli_epi16(x, shift), mask), l = _mm256_and_si256(x, mask);
    *lo = _mm256_unpacklo_epi8(h, l);
    *hi = _mm256_unpackhi_epi8(h, l);
}

/* b = 2: bytes -> nibbles -> 2-bit codes, then 4 lane permutes: 32 bytes -> 128 codes. */
INLINE Py_ssize_t unpack_bulk_2(const uint8_t *in, Py_ssize_t n, uint8_t *out) {
    const __m256i m4 = _mm256_set1_epi8(0x0F), m2 = _mm256_set1_epi8(0x03);
    Py_ssize_t k = n / 128;
    for (Py_ssize_t j = 0; j < k; j++, in += 32, out += 128) {
        __m256i a, c, a0, a1, c0, c1;
        split_interleave(_mm256_loadu_si256((const __m256i *)in), 4, m4, &a, &c);
        split_interleave(a, 2, m2, &a0, &a1); /* codes 0-15 | 64-79, 16-31 | 80-95 */
        split_interleave(c, 2, m2, &c0, &c1); /* codes 32-47 | 96-111, 48-63 | 112-127 */
        _mm256_storeu_si256((__m256i *)out, _mm256_permute2x128_si256(a0, a1, 0x20));
        _mm256_storeu_si256((__m256i *)(out + 32), _mm256_permute2x128_si256(c0, c1, 0x20));
        _mm256_storeu_si256((__m256i *)(out + 64), _mm256_permute2x128_si256(a0, a1, 0x31));
        _mm256_storeu_si256((__m256i *)(out + 96), _mm256_permute2x128_si256(c0, c1, 0x31));
    }
    return k * 128;
}

/* b = 4: nibbles, 32 bytes -> 64 codes. */
INLINE Py_ssize_t unpack_bulk_4(const uint8_t *in, Py_ssize_t n, uint8_t *out) {
    const __m256i m4 = _mm256_set1_epi8(0x0F);
    Py_ssize_t k = n / 64;
    for (Py_ssize_t j = 0; j < k; j++, in += 32, out += 64) {
        __m256i a, c;
        split_interleave(_mm256_loadu_si256((const __m256i *)in), 4, m4, &a, &c);
        _mm256_storeu_si256((__m256i *)out, _mm256_permute2x128_si256(a, c, 0x20));
        _mm256_storeu_si256((__m256i *)(out + 32), _mm256_permute2x128_si256(a, c, 0x31));
    }
    return k * 64;
}

/* b = 3, 5, 6, 7: 32 codes = 4b bytes; the 128-bit lane 0 decodes codes 0-15 from the 2b bytes at
 * its byte base0, lane 1 codes 16-31 from the 2b bytes at base1. Each code goes to a 16-bit lane
 * holding the two bytes it starts in, big-endian (shuffle; a second byte past the lane is never
 * part of a code and reads as 0), then (w * 2^(b + offset)) >> 16 (mulhi) & (2^b - 1) is the code,
 * offset being its first bit within the first byte. Lanes of codes 0-7 | 16-23 and 8-15 | 24-31
 * are packed to bytes in order. */
INLINE __m256i codes_g(__m256i x, int b, int base0, int base1) {
#define K(c) (((c) * b) >> 3)
#define O(c) (((c) * b) & 7)
#define IX(base, k) ((base) + (k) < 16 ? (base) + (k) : 0x80)
#define W(base, c) IX(base, K(c) + 1), IX(base, K(c))
#define HALF(base, c) W(base, c), W(base, c + 1), W(base, c + 2), W(base, c + 3), W(base, c + 4), \
        W(base, c + 5), W(base, c + 6), W(base, c + 7)
#define M(c) (short)(1 << (b + O(c)))
    const __m256i sa = _mm256_setr_epi8(HALF(base0, 0), HALF(base1, 0));
    const __m256i sb = _mm256_setr_epi8(HALF(base0, 8), HALF(base1, 8));
    const __m256i mul = _mm256_setr_epi16(M(0), M(1), M(2), M(3), M(4), M(5), M(6), M(7),
                                          M(0), M(1), M(2), M(3), M(4), M(5), M(6), M(7));
#undef M
#undef HALF
#undef W
#undef IX
#undef O
#undef K
    const __m256i mask = _mm256_set1_epi16((short)((1 << b) - 1));
    __m256i a = _mm256_and_si256(_mm256_mulhi_epu16(_mm256_shuffle_epi8(x, sa), mul), mask);
    __m256i c = _mm256_and_si256(_mm256_mulhi_epu16(_mm256_shuffle_epi8(x, sb), mul), mask);
    return _mm256_packus_epi16(a, c);
}

/* Loads: for b = 3 the 16 bytes at o serve both lanes (a broadcast load: no shuffle-port insert);
 * for b > 4 one 32-byte load at o + 2b - 16 (lane 0 finds its bytes at 16 - 2b), after a first
 * step with two 16-byte loads. Every load stays below in_len, every store below n. */
INLINE Py_ssize_t unpack_bulk_g(const uint8_t *in, Py_ssize_t in_len, Py_ssize_t n, uint8_t *out,
                                int b) {
    if (b <= 4) {
        Py_ssize_t k = min_ss(n / 32, steps_within(in_len, 16, 4 * b)), j = 0;
#define STEP(in, out) _mm256_storeu_si256((__m256i *)(out), codes_g(_mm256_broadcastsi128_si256( \
        _mm_loadu_si128((const __m128i *)(in))), b, 0, 2 * b))
        for (; j + 2 <= k; j += 2, in += 8 * b, out += 64) {
            STEP(in, out);
            STEP(in + 4 * b, out + 32);
        }
        if (j < k)
            STEP(in, out);
#undef STEP
        return k * 32;
    }
    Py_ssize_t k = min_ss(n / 32, steps_within(in_len, 2 * b + 16, 4 * b)), j = 1;
    if (k == 0)
        return 0;
    __m256i x = _mm256_loadu2_m128i((const __m128i *)(in + 2 * b), (const __m128i *)in);
    _mm256_storeu_si256((__m256i *)out, codes_g(x, b, 0, 0));
    in += 4 * b, out += 32;
#define STEP(in, out) _mm256_storeu_si256((__m256i *)(out), codes_g(_mm256_loadu_si256( \
        (const __m256i *)((in) + 2 * b - 16)), b, 16 - 2 * b, 0))
    for (; j + 2 <= k; j += 2, in += 8 * b, out += 64) {
        STEP(in, out);
        STEP(in + 4 * b, out + 32);
    }
    if (j < k)
        STEP(in, out);
#undef STEP
    return k * 32;
}

/* Codes to do with scalar code first so that the vector loop's 32-byte accesses to `p` (the codes:
 * input of pack, output of unpack) are aligned: loads or stores split across cache lines cost
 * pack about 25 %. Only whole groups of 8 codes can be split off. */
INLINE Py_ssize_t align_head(const uint8_t *p, Py_ssize_t n) {
    Py_ssize_t head = (Py_ssize_t)(-(uintptr_t)p & 31);
    return head % 8 == 0 && head <= n ? head : 0;
}

/* Returns 1 when every code fits. */
INLINE int pack_b(const uint8_t *in, Py_ssize_t n, uint8_t *out, Py_ssize_t out_len, int b) {
    __m256i acc = _mm256_setzero_si256();
    Py_ssize_t h = align_head(in, n), ho = h / 8 * b, i;
    uint8_t sacc = pack_scalar_from(in, 0, h, out, out_len, b);
    switch (b) {
    case 1: i = pack_bulk_1(in + h, n - h, out + ho, &acc); break;
    case 2: i = pack_bulk_2(in + h, n - h, out + ho, &acc); break;
    case 4: i = pack_bulk_4(in + h, n - h, out + ho, &acc); break;
    default: i = pack_bulk_g(in + h, n - h, out + ho, out_len - ho, &acc, b); break;
    }
    sacc |= pack_scalar_from(in, h + i, n, out, out_len, b);
    return acc_fits(acc, b) && !(sacc >> b);
}

INLINE void unpack_b(const uint8_t *in, Py_ssize_t in_len, Py_ssize_t n, uint8_t *out, int b) {
    Py_ssize_t h = align_head(out, n), ho = h / 8 * b, i;
    unpack_scalar_from(in, in_len, 0, h, out, b);
    switch (b) {
    case 1: i = unpack_bulk_1(in + ho, n - h, out + h); break;
    case 2: i = unpack_bulk_2(in + ho, n - h, out + h); break;
    case 4: i = unpack_bulk_4(in + ho, n - h, out + h); break;
    default: i = unpack_bulk_g(in + ho, in_len - ho, n - h, out + h, b); break;
    }
    unpack_scalar_from(in, in_len, h + i, n, out, b);
}

#else /* portable SWAR: the scalar group loop is the bulk loop */
#define ISA_NAME "scalar"

INLINE int pack_b(const uint8_t *in, Py_ssize_t n, uint8_t *out, Py_ssize_t out_len, int b) {
    return !(pack_scalar_from(in, 0, n, out, out_len, b) >> b);
}

INLINE void unpack_b(const uint8_t *in, Py_ssize_t in_len, Py_ssize_t n, uint8_t *out, int b) {
    unpack_scalar_from(in, in_len, 0, n, out, b);
}
#endif

/* Dispatch to a constant-b specialisation. b = 8 is a plain copy. */
static int pack_codes(const uint8_t *in, Py_ssize_t n, uint8_t *out, Py_ssize_t out_len, int b) {
    switch (b) {
    case 1: return pack_b(in, n, out, out_len, 1);
    case 2: return pack_b(in, n, out, out_len, 2);
    case 3: return pack_b(in, n, out, out_len, 3);
    case 4: return pack_b(in, n, out, out_len, 4);
    case 5: return pack_b(in, n, out, out_len, 5);
    case 6: return pack_b(in, n, out, out_len, 6);
    case 7: return pack_b(in, n, out, out_len, 7);
    default: memcpy(out, in, (size_t)n); return 1;
    }
}

static void unpack_codes(const uint8_t *in, Py_ssize_t in_len, Py_ssize_t n, uint8_t *out, int b) {
    switch (b) {
    case 1: unpack_b(in, in_len, n, out, 1); break;
    case 2: unpack_b(in, in_len, n, out, 2); break;
    case 3: unpack_b(in, in_len, n, out, 3); break;
    case 4: unpack_b(in, in_len, n, out, 4); break;
    case 5: unpack_b(in, in_len, n, out, 5); break;
    case 6: unpack_b(in, in_len, n, out, 6); break;
    case 7: unpack_b(in, in_len, n, out, 7); break;
    default: memcpy(out, in, (size_t)n); break;
    }
}

/* ------------------------------------------------------------------------------------------ */
/* Python glue.                                                                                */

/* bits as a C int in 1..8, or 0 when it is not a Python int in that range. */
static int bits_arg(PyObject *obj) {
    if (!PyLong_Check(obj))
        return 0;
    int overflow = 0;
    long b = PyLong_AsLongAndOverflow(obj, &overflow);
    if (overflow || b < 1 || b > 8)
        return 0;
    return (int)b;
}

static int is_byte_format(const char *format) {
    return format == NULL || (format[0] == 'B' && format[1] == '\0');
}

static PyObject *bitpack_pack(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "pack(codes, bits) takes 2 arguments");
        return NULL;
    }
    int b = bits_arg(args[1]);
    if (b == 0)
        Py_RETURN_NOTIMPLEMENTED;
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) {
        PyErr_Clear();
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (view.itemsize != 1 || !is_byte_format(view.format)) {
        PyBuffer_Release(&view);
        Py_RETURN_NOTIMPLEMENTED;
    }
    Py_ssize_t n = view.len;
    if (n > (PY_SSIZE_T_MAX - 7) / 8) {
        PyBuffer_Release(&view);
        return PyErr_NoMemory();
    }
    Py_ssize_t out_len = (n * b + 7) / 8;
    PyObject *result = PyBytes_FromStringAndSize(NULL, out_len);
    if (result == NULL) {
        PyBuffer_Release(&view);
        return NULL;
    }
    int fits;
    if (n >= GIL_FREE_CODES) {
        Py_BEGIN_ALLOW_THREADS
        fits = pack_codes((const uint8_t *)view.buf, n, (uint8_t *)PyBytes_AS_STRING(result), out_len, b);
        Py_END_ALLOW_THREADS
    } else {
        fits = pack_codes((const uint8_t *)view.buf, n, (uint8_t *)PyBytes_AS_STRING(result), out_len, b);
    }
    PyBuffer_Release(&view);
    if (!fits) {
        Py_DECREF(result);
        PyErr_Format(PyExc_ValueError, "a code does not fit in %d bits", b);
        return NULL;
    }
    return result;
}

/* n as a Py_ssize_t >= 0, or -1 when it is not a Python int in that range. */
static Py_ssize_t count_arg(PyObject *obj) {
    if (!PyLong_Check(obj))
        return -1;
    Py_ssize_t n = PyLong_AsSsize_t(obj);
    if (n < 0 || n > (PY_SSIZE_T_MAX - 7) / 8) {
        PyErr_Clear();
        return -1;
    }
    return n;
}

static PyObject *bitpack_unpack(PyObject *self, PyObject *const *args, Py_ssize_t nargs) {
    (void)self;
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "unpack(payload, bits, n) takes 3 arguments");
        return NULL;
    }
    int b = bits_arg(args[1]);
    Py_ssize_t n = count_arg(args[2]);
    if (b == 0 || n < 0)
        Py_RETURN_NOTIMPLEMENTED;
    Py_buffer src;
    if (PyObject_GetBuffer(args[0], &src, PyBUF_C_CONTIGUOUS) < 0)
        return NULL;
    Py_ssize_t expected = (n * b + 7) / 8;
    if (src.len != expected) {
        PyErr_Format(PyExc_ValueError, "payload has %zd bytes, %zd codes of %d bits need %zd", src.len, n, b,
                     expected);
        PyBuffer_Release(&src);
        return NULL;
    }
    npy_intp dims[1] = {(npy_intp)n};
    PyObject *result = PyArray_SimpleNew(1, dims, NPY_UINT8);
    if (result == NULL) {
        PyBuffer_Release(&src);
        return NULL;
    }
    uint8_t *dst = (uint8_t *)PyArray_DATA((PyArrayObject *)result);
    if (n >= GIL_FREE_CODES) {
        Py_BEGIN_ALLOW_THREADS
        unpack_codes((const uint8_t *)src.buf, src.len, n, dst, b);
        Py_END_ALLOW_THREADS
    } else {
        unpack_codes((const uint8_t *)src.buf, src.len, n, dst, b);
    }
    PyBuffer_Release(&src);
    return result;
}

static PyMethodDef bitpack_methods[] = {
    {"pack", (PyCFunction)(void (*)(void))bitpack_pack, METH_FASTCALL,
     "pack(codes, bits) -> bytes, or NotImplemented for a non-uint8/non-contiguous buffer or bad bits"},
    {"unpack", (PyCFunction)(void (*)(void))bitpack_unpack, METH_FASTCALL,
     "unpack(payload, bits, n) -> new uint8 array, or NotImplemented when bits / n are not ints in range"},
    {NULL, NULL, 0, NULL},
};

static int bitpack_exec(PyObject *module) {
    if (_import_array() < 0)
        return -1;
    return PyModule_AddStringConstant(module, "ISA", ISA_NAME);
}

static PyModuleDef_Slot bitpack_slots[] = {
    {Py_mod_exec, (void *)bitpack_exec},
    {0, NULL},
};

static struct PyModuleDef bitpack_module = {
    PyModuleDef_HEAD_INIT, "_bitpack", "Bit-packing kernels for compress.codec.", 0, bitpack_methods,
    bitpack_slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__bitpack(void) { return PyModuleDef_Init(&bitpack_module); }
