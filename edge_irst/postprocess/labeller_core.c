/* Run-based eight-connected labelling with fused thresholding and statistics (contract in labeller_core.h).
 *
 * Why runs: IR logit maps are very sparse (a few targets in 65 k .. 2 M pixels). Pass 1 reads each row 64 pixels
 * at a time as a bit word (after a background row, the background rows that follow are read as one array, one
 * SIMD test per 64 pixels and no per-row work) and records the foreground runs [x0, x1] of the row. A run joins
 * every run of the previous row that it touches under the eight-neighbour rule (a0 <= b1 + 1 and b0 <= a1 + 1)
 * through a union-find over runs whose root is always the lowest run index, i.e.
 * the component's first run in raster order. Pass 2 visits the runs only (not the image): it numbers the
 * components and accumulates their statistics from the pixels of the runs. Work and memory grow with the
 * foreground.
 *
 * Threads: pass 1 can split the rows into bands scanned on separate threads, each with its own runs and its own
 * union-find; the bands' runs are then concatenated in row order and the runs of the rows on either side of each
 * seam joined. Roots stay the lowest run index, so the numbering, and everything after it, is the same as with
 * one band. Pass 2 stays on the calling thread: it sums each component in raster order (see the header).
 */
#if defined(__unix__) || defined(__APPLE__)
#define IRST_THREADS 1 /* row bands on pthreads; elsewhere they are scanned one after the other */
#ifndef _POSIX_C_SOURCE
#define _POSIX_C_SOURCE 200809L /* pthreads under -std=c99 */
#endif
#endif
#include "labeller_core.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* x0..x1 inclusive on row y. `link` is the parent run during union-find (always <= the run's own index), then
 * the run's target label once components are numbered. */
typedef struct {
    int32_t x0, x1, y, link;
} run_t;

/* The sums of the weighted centroid: weight = logit - threshold, over the finite pixels. */
typedef struct {
    double weight, weight_x, weight_y;
} weight_sums;

typedef struct {
    int64_t size, sum_x, sum_y, inf_count, inf_sum_x, inf_sum_y;
    weight_sums weights;
    double sum_logit;
    float peak;
    int32_t peak_x, peak_y, x_min, x_max, y_min, y_max;
} accumulator;

/* A target's slot holds its accumulator during pass 2 and is overwritten in place by its final record. */
typedef union {
    accumulator acc;
    irst_target target;
} slot_t;
/* The slots are returned as an irst_target array, so both must have the same stride. */
typedef char slot_is_a_target[sizeof(slot_t) == sizeof(irst_target) ? 1 : -1];

/* Foreground bits of one row, 64 pixels per word, and which words are worth a look (see MASK_ROW_WITH). Returns
 * the OR of the `worth` words: 0 when the row holds no foreground. */
typedef uint64_t (*row_mask_fn)(const float *row, ptrdiff_t width, ptrdiff_t step, float t, uint64_t *words,
                                uint64_t *worth);
/* For rows stored back to back (a C-contiguous map): the first row from `y` on, before `y_end`, that may hold
 * foreground, every row before it being background; `y_end` if there is none. */
typedef ptrdiff_t (*row_skip_fn)(const float *data, ptrdiff_t width, ptrdiff_t y, ptrdiff_t y_end, float t);
/* One instruction set's scan. */
typedef struct {
    row_mask_fn mask_row;
    row_skip_fn skip_rows;
    const char *name;
} scan_t;

/* One band of rows scanned by pass 1: its runs, with links local to the band, and where its first and last rows'
 * runs are (for the seams). Band 0's runs are then extended by the others' into the workspace's run list. */
typedef struct {
    run_t *runs;
    ptrdiff_t run_capacity;
    uint64_t *words; /* the current row's bits, then which of them are worth a look (MASK_ROW_WITH) */
    ptrdiff_t word_capacity;
    ptrdiff_t count, first_row_end, last_row_begin;
    /* the job */
    const irst_map *map;
    float threshold;
    ptrdiff_t y_begin, y_end;
    scan_t scan;
    int status;
} band_t;

struct irst_workspace {
    band_t bands[IRST_MAX_THREADS]; /* bands[0].runs: every run, after the merge */
    slot_t *slots;
    ptrdiff_t slot_capacity;
    ptrdiff_t last_run_count; /* irst_last_run_count() */
    int bands_held; /* bands 0..bands_held-1 may hold buffers worth shrinking; the others have not grown since */
    scan_t scan; /* the fastest this CPU runs, chosen in irst_workspace_new() */
};

#define FIRST_RUN_CAPACITY 1024
/* A buffer more than 4x larger than a call needed, and over 1 MiB, is shrunk (a dense frame must not pin its
 * memory for the sparse frames after it). */
#define EXCESS_FACTOR 4
#define EXCESS_BYTES ((size_t)1 << 20)

/* Foreground bits of `count` (<= 64) pixels p[0], p[step], ...: bit k set iff p[k * step] > t. `>` is false for
 * NaN, so NaN stays background. */
static inline uint64_t mask_strided(const float *p, ptrdiff_t step, int count, float t)
{
    uint64_t bits = 0;
    for (int k = 0; k < count; k++)
        bits |= (uint64_t)(p[k * step] > t) << k;
    return bits;
}

/* The same for 64 contiguous pixels, with SIMD where the target has it (the scan is the whole cost on sparse maps,
 * so "all background" is answered for 64 pixels at once before any bit is computed). Define IRST_PORTABLE to test
 * the plain C path on any machine. The SIMD compares are ordered: false for NaN, like the C `>`. NEON keeps an OR
 * of compares: its FMAXNM returns NaN for a signalling NaN, which could hide a target. */
#if defined(__SSE2__) && !defined(IRST_PORTABLE)
#include <emmintrin.h>
/* Nonzero iff one of the 64 pixels is > t. Four running maxima seeded with t: MAXPS returns its second operand when
 * the first is a NaN (quiet or signalling), so a NaN pixel never enters them. 16 MAXPS + 1 compare instead of 16
 * compares + 15 ORs: the sparse scan is a third shorter. */
static inline int any64(const float *p, float t)
{
    const __m128 tv = _mm_set1_ps(t);
    __m128 m0 = tv, m1 = tv, m2 = tv, m3 = tv;
    for (int k = 0; k < 64; k += 16) {
        m0 = _mm_max_ps(_mm_loadu_ps(p + k), m0);
        m1 = _mm_max_ps(_mm_loadu_ps(p + k + 4), m1);
        m2 = _mm_max_ps(_mm_loadu_ps(p + k + 8), m2);
        m3 = _mm_max_ps(_mm_loadu_ps(p + k + 12), m3);
    }
    return _mm_movemask_ps(_mm_cmpgt_ps(_mm_max_ps(_mm_max_ps(m0, m1), _mm_max_ps(m2, m3)), tv));
}

static inline uint64_t mask64(const float *p, float t)
{
    if (!any64(p, t))
        return 0;
    const __m128 tv = _mm_set1_ps(t);
    uint64_t bits = 0;
    for (int k = 0; k < 16; k++)
        bits |= (uint64_t)_mm_movemask_ps(_mm_cmpgt_ps(_mm_loadu_ps(p + 4 * k), tv)) << (4 * k);
    return bits;
}
#elif defined(__aarch64__) && !defined(IRST_PORTABLE)
#include <arm_neon.h>
static inline int any64(const float *p, float t)
{
    const float32x4_t tv = vdupq_n_f32(t);
    uint32x4_t any = vdupq_n_u32(0);
    for (int k = 0; k < 16; k++)
        any = vorrq_u32(any, vcgtq_f32(vld1q_f32(p + 4 * k), tv));
    return vmaxvq_u32(any) != 0;
}

static inline uint64_t mask64(const float *p, float t)
{
    static const uint32_t lane_bits[4] = {1, 2, 4, 8};
    if (!any64(p, t))
        return 0;
    const float32x4_t tv = vdupq_n_f32(t);
    const uint32x4_t weights = vld1q_u32(lane_bits);
    uint64_t bits = 0;
    for (int k = 0; k < 16; k++)
        bits |= (uint64_t)vaddvq_u32(vandq_u32(vcgtq_f32(vld1q_f32(p + 4 * k), tv), weights)) << (4 * k);
    return bits;
}
#else
static inline int any64(const float *p, float t)
{
    for (int k = 0; k < 64; k++)
        if (p[k] > t)
            return 1;
    return 0;
}

static inline uint64_t mask64(const float *p, float t)
{
    return mask_strided(p, 1, 64, t);
}
#endif

/* AVX2 (x86 since 2013) halves the instructions of the scan; chosen at run time, so the extension still loads on
 * any x86-64. Same NaN rule: the ordered compare is false for NaN, and MAXPS keeps its second operand for one. */
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__) && !defined(IRST_PORTABLE) && \
    !defined(IRST_NO_AVX2)
#define IRST_AVX2_DISPATCH 1
#include <immintrin.h>
__attribute__((target("avx2"))) static inline int any64_avx2(const float *p, float t)
{
    const __m256 tv = _mm256_set1_ps(t);
    __m256 m0 = tv, m1 = tv;
    for (int k = 0; k < 64; k += 16) {
        m0 = _mm256_max_ps(_mm256_loadu_ps(p + k), m0);
        m1 = _mm256_max_ps(_mm256_loadu_ps(p + k + 8), m1);
    }
    return _mm256_movemask_ps(_mm256_cmp_ps(_mm256_max_ps(m0, m1), tv, _CMP_GT_OQ));
}

/* No "all background?" test first (any64_avx2 is for skip_rows): on the rows mask_row is called for, which hold
 * foreground, a branch on it mispredicts wherever targets come and go along the row, and costs more than it saves
 * (sparse maps 8-11 % faster without it, on new maps every call). */
__attribute__((target("avx2"))) static inline uint64_t mask64_avx2(const float *p, float t)
{
    const __m256 tv = _mm256_set1_ps(t);
    uint64_t bits = 0;
    for (int k = 0; k < 8; k++)
        bits |= (uint64_t)(uint32_t)_mm256_movemask_ps(_mm256_cmp_ps(_mm256_loadu_ps(p + 8 * k), tv, _CMP_GT_OQ))
                << (8 * k);
    return bits;
}
#endif

#if defined(__GNUC__)
#define lowest_bit(v) __builtin_ctzll(v)
#else
static inline int lowest_bit(uint64_t v)
{
    int n = 0;
    while (!(v & 1)) {
        v >>= 1;
        n++;
    }
    return n;
}
#endif

/* Makes room for `needed` elements of `size` bytes, growing geometrically from `first`. Returns 0 or -1. */
static int reserve(void **buffer, ptrdiff_t *capacity, ptrdiff_t needed, size_t size, ptrdiff_t first)
{
    if (needed <= *capacity)
        return 0;
    ptrdiff_t grown = *capacity > 0 ? *capacity : first;
    while (grown < needed)
        grown *= 2;
    if ((size_t)grown > SIZE_MAX / size)
        return -1;
    void *larger = realloc(*buffer, (size_t)grown * size);
    if (!larger)
        return -1;
    *buffer = larger;
    *capacity = grown;
    return 0;
}

/* Shrinks a buffer far larger than the `used` elements of `size` bytes that this call needed (see EXCESS_FACTOR)
 * to twice that, keeping its content; reserve() regrows it. */
static void shrink_excess(void **buffer, ptrdiff_t *capacity, ptrdiff_t used, size_t size)
{
    if (*capacity > EXCESS_FACTOR * used && (size_t)*capacity * size > EXCESS_BYTES) {
        const ptrdiff_t kept = 2 * used;
        void *smaller = realloc(*buffer, (size_t)(kept > 0 ? kept : 1) * size);
        if (smaller) { /* a failed shrink keeps the larger buffer, which is still valid */
            *buffer = smaller;
            *capacity = kept;
        }
    }
}

/* Root of run i, halving the path on the way (every parent has a lower index, so the invariant holds). */
static inline int32_t find_root(run_t *runs, int32_t i)
{
    while (runs[i].link != i) {
        const int32_t grandparent = runs[runs[i].link].link;
        runs[i].link = grandparent;
        i = grandparent;
    }
    return i;
}

/* Joins run `current` (x0..x1) to the runs of the row above that it touches (a0 <= x1 + 1 and x0 <= a1 + 1),
 * the lower root index (earlier first pixel) staying the root. Runs [*above, above_end) of the row above are
 * still to be matched; runs of a row come left to right. */
static inline void join_above(run_t *runs, int32_t current, ptrdiff_t x0, ptrdiff_t x1, ptrdiff_t *above,
                              ptrdiff_t above_end)
{
    ptrdiff_t k = *above;
    while (k < above_end && runs[k].x1 + 1 < x0)
        k++;
    int32_t root = current;
    const ptrdiff_t first_touching = k;
    for (; k < above_end && runs[k].x0 <= x1 + 1; k++) {
        int32_t other = runs[k].link;
        if (other == root) /* already joined through an earlier run above: common in dense regions */
            continue;
        if (runs[other].link != other) /* most runs point straight at their root */
            other = find_root(runs, other);
        if (other < root) {
            if (root != current)
                runs[root].link = other;
            root = other;
        } else if (other > root) {
            runs[other].link = root;
        }
    }
    runs[current].link = root;
    /* The next run of this row starts at x1 + 2 or later: only the last run touched may reach it (the ones before
     * it end before it starts, at most at x1 - 1). */
    *above = k > first_touching ? k - 1 : k;
}

/* Writes width / 64 + 1 words of foreground bits for one row: one more (empty) word when width is a multiple of
 * 64, so that a run reaching the last pixel still ends at an edge (at x = width). Bit k % 64 of worth[k / 64] is
 * set iff word k holds foreground or the last pixel of word k - 1 does (a run ends in word k): the words pass 1
 * looks at. Computed here, as the words come out of the compares, rather than by a second loop over them: that
 * loop read every word of every row with foreground back from memory. Returns the OR of the worth words.
 * Inlined into one function per instruction set, each called once per row through band->scan.mask_row. */
#define MASK_ROW_WITH(word_mask)                                                                                \
    do {                                                                                                        \
        ptrdiff_t base = 0, k = 0;                                                                              \
        uint64_t carry = 0, bits = 0, any = 0; /* carry: the last pixel of the word before; bits: worth[k / 64] */ \
        if (step == 1)                                                                                          \
            for (; base + 64 <= width; base += 64)                                                              \
                NOTE_WORD(word_mask(row + base, t));                                                            \
        for (; base < width; base += 64)                                                                        \
            NOTE_WORD(mask_strided(row + base * step, step, width - base < 64 ? (int)(width - base) : 64, t));  \
        if (width % 64 == 0)                                                                                    \
            NOTE_WORD(0);                                                                                       \
        if (k % 64)                                                                                             \
            any |= worth[k / 64] = bits;                                                                        \
        return any;                                                                                             \
    } while (0)
#define NOTE_WORD(value)                                                                                        \
    do {                                                                                                        \
        const uint64_t word_ = (value);                                                                         \
        words[k] = word_;                                                                                       \
        bits |= (uint64_t)((word_ | carry) != 0) << (k % 64);                                                   \
        carry = word_ >> 63;                                                                                    \
        if (++k % 64 == 0) {                                                                                    \
            any |= worth[k / 64 - 1] = bits;                                                                    \
            bits = 0;                                                                                           \
        }                                                                                                       \
    } while (0)

/* The rows before the first block of 64 pixels holding foreground (rows y .. y_end - 1 read as one array) are
 * background: returns the row of that block, or of the last pixels (fewer than 64, left to the row scan), or y_end.
 * One test per 64 pixels and no per-row work: a sparse map's empty rows are read at the speed of a plain maximum. */
#define SKIP_ROWS_WITH(block_has_foreground)                                                                    \
    do {                                                                                                        \
        const float *p = data + y * width, *const end = data + y_end * width;                                   \
        while (end - p >= 64 && !block_has_foreground(p, t))                                                    \
            p += 64;                                                                                            \
        return (p - data) / width; /* y_end when every row is background */                                   \
    } while (0)

/* One instruction set's mask_row_<isa>() and skip_rows_<isa>() (row_mask_fn, row_skip_fn), from its 64-pixel
 * tests; `attributes` is empty for the build's own target, or the target() attribute of a dispatched one. */
#define DEFINE_SCAN(isa, attributes, block_has_foreground, word_mask)                                           \
    attributes static uint64_t mask_row_##isa(const float *row, ptrdiff_t width, ptrdiff_t step, float t,       \
                                              uint64_t *words, uint64_t *worth)                                 \
    {                                                                                                           \
        MASK_ROW_WITH(word_mask);                                                                               \
    }                                                                                                           \
    attributes static ptrdiff_t skip_rows_##isa(const float *data, ptrdiff_t width, ptrdiff_t y,                \
                                                ptrdiff_t y_end, float t)                                       \
    {                                                                                                           \
        SKIP_ROWS_WITH(block_has_foreground);                                                                   \
    }

DEFINE_SCAN(baseline, , any64, mask64)
#ifdef IRST_AVX2_DISPATCH
DEFINE_SCAN(avx2, __attribute__((target("avx2"))), any64_avx2, mask64_avx2)
#endif

/* AVX-512F (Intel Xeon since Skylake-SP, AMD since Zen 4): 64 pixels are four registers, tested with a tree of
 * MAXPS, and a compare into a mask register gives 16 bits at once. Same NaN rule as AVX2. */
#if defined(IRST_AVX2_DISPATCH) && !defined(IRST_NO_AVX512)
#define IRST_AVX512_DISPATCH 1
__attribute__((target("avx512f"))) static inline int any64_avx512(const float *p, float t)
{
    const __m512 tv = _mm512_set1_ps(t);
    const __m512 low = _mm512_max_ps(_mm512_loadu_ps(p + 16), _mm512_max_ps(_mm512_loadu_ps(p), tv));
    const __m512 high = _mm512_max_ps(_mm512_loadu_ps(p + 48), _mm512_max_ps(_mm512_loadu_ps(p + 32), tv));
    return _mm512_cmp_ps_mask(_mm512_max_ps(low, high), tv, _CMP_GT_OQ) != 0;
}

/* No "all background?" test first, as for AVX2: four compares into mask registers cost no more than the test. */
__attribute__((target("avx512f"))) static inline uint64_t mask64_avx512(const float *p, float t)
{
    const __m512 tv = _mm512_set1_ps(t);
    return (uint64_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(p), tv, _CMP_GT_OQ) |
           (uint64_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(p + 16), tv, _CMP_GT_OQ) << 16 |
           (uint64_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(p + 32), tv, _CMP_GT_OQ) << 32 |
           (uint64_t)_mm512_cmp_ps_mask(_mm512_loadu_ps(p + 48), tv, _CMP_GT_OQ) << 48;
}

DEFINE_SCAN(avx512, __attribute__((target("avx512f"))), any64_avx512, mask64_avx512)
#endif

static scan_t fastest_scan(void)
{
#ifdef IRST_AVX512_DISPATCH
    if (__builtin_cpu_supports("avx512f"))
        return (scan_t){mask_row_avx512, skip_rows_avx512, "avx512"};
#endif
#ifdef IRST_AVX2_DISPATCH
    if (__builtin_cpu_supports("avx2"))
        return (scan_t){mask_row_avx2, skip_rows_avx2, "avx2"};
#endif
#if defined(__SSE2__) && !defined(IRST_PORTABLE)
    return (scan_t){mask_row_baseline, skip_rows_baseline, "sse2"};
#elif defined(__aarch64__) && !defined(IRST_PORTABLE)
    return (scan_t){mask_row_baseline, skip_rows_baseline, "neon"};
#else
    return (scan_t){mask_row_baseline, skip_rows_baseline, "portable"};
#endif
}

/* Pass 1 over the rows of one band: the runs of every row, joined to the runs of the row above (in the band)
 * that they touch. Sets band->status (IRST_OK or IRST_NO_MEMORY) and its counts. The set bits of
 * word ^ (word << 1 | carry) are where the foreground starts or stops, so runs come out of a bit loop with no
 * per-pixel branch on dense maps. The words worth a look (those with foreground, and the one after a word whose
 * last pixel is foreground, where that run ends) are taken from a bit set: an empty word costs no branch, which
 * on a sparse row would mispredict wherever a target comes or goes. */
/* 64-bit words a band's `words` buffer holds for rows of `width` pixels: one before the row, the row's bits (one
 * word more than whole words: where the last run ends), then one bit per row word (which are worth a look). */
static ptrdiff_t band_words(ptrdiff_t width)
{
    const ptrdiff_t word_count = width / 64 + 1;
    return 1 + word_count + (word_count + 63) / 64;
}

static void collect_runs(band_t *band)
{
    const irst_map *map = band->map;
    const ptrdiff_t width = map->width, word_count = width / 64 + 1;
    band->count = band->first_row_end = band->last_row_begin = 0;
    band->status = IRST_NO_MEMORY;
    if (reserve((void **)&band->words, &band->word_capacity, band_words(width), sizeof(uint64_t), 32))
        return;
    band->words[0] = 0; /* before the row's first word: no foreground carried into it */
    uint64_t *const words = band->words + 1, *const worth_words = words + word_count;
    run_t *runs = band->runs;
    ptrdiff_t count = 0, above_begin = 0, above_end = 0;
    /* Rows back to back in memory: after a background row, the background rows that follow are skipped. */
    const int skip = map->col_stride == 1 && map->row_stride == width;
    int background = 1; /* the row before y held no foreground (none does before the band's first) */
    for (ptrdiff_t y = band->y_begin; y < band->y_end; y++) {
        if (skip && background) {
            const ptrdiff_t next = band->scan.skip_rows(map->data, width, y, band->y_end, band->threshold);
            if (next > y) { /* rows y .. next - 1 are background: no runs, and none above row next */
                above_begin = above_end = count;
                y = next;
                if (y == band->y_end)
                    break;
            }
        }
        const int any = band->scan.mask_row(map->data + y * map->row_stride, width, map->col_stride,
                                            band->threshold, words, worth_words) != 0;
        background = !any;
        ptrdiff_t above = above_begin, start = -1;
        for (ptrdiff_t group = 0; any && group < word_count; group += 64) {
            uint64_t worth = worth_words[group / 64];
            while (worth) {
                const ptrdiff_t k = group + lowest_bit(worth);
                worth &= worth - 1;
                const uint64_t word = words[k];
                uint64_t edges = word ^ ((word << 1) | words[k - 1] >> 63);
                if (!edges) /* inside a run that goes on */
                    continue;
                /* A word ends at most 32 runs: room for them is made once per word, not per run. */
                if (count + 32 > band->run_capacity) {
                    if (reserve((void **)&band->runs, &band->run_capacity, count + 32, sizeof(run_t),
                                FIRST_RUN_CAPACITY) != 0)
                        return;
                    runs = band->runs;
                }
                const ptrdiff_t base = 64 * k;
                /* Edges alternate start, end, start ...; a run open at the word's start (start >= 0) ends at its
                 * first edge. Taking them in pairs keeps the branches predictable on noisy maps. */
                while (edges) {
                    if (start < 0) {
                        start = base + lowest_bit(edges);
                        edges &= edges - 1;
                        if (!edges) /* the run goes on into the next word */
                            break;
                    }
                    const ptrdiff_t end = base + lowest_bit(edges); /* first background pixel after the run */
                    edges &= edges - 1;
                    runs[count].x0 = (int32_t)start;
                    runs[count].x1 = (int32_t)(end - 1);
                    runs[count].y = (int32_t)y;
                    join_above(runs, (int32_t)count, start, end - 1, &above, above_end);
                    count++;
                    start = -1;
                }
            }
        }
        if (y == band->y_begin)
            band->first_row_end = count;
        above_begin = above_end;
        above_end = count;
    }
    band->count = count;
    band->last_row_begin = above_begin; /* the runs of the band's last row: [above_begin, count) */
    band->status = IRST_OK;
}

/* Joins runs i and j (global indices): the higher root points to the lower one, so roots stay the lowest index. */
static inline void join_runs(run_t *runs, int32_t i, int32_t j)
{
    const int32_t a = find_root(runs, i), b = find_root(runs, j);
    if (a < b)
        runs[b].link = a;
    else if (b < a)
        runs[a].link = b;
}

/* Joins the runs of a seam's lower row, [below, below_end), to those of its upper row, [above, above_end), that
 * they touch under the eight-neighbour rule (both lists left to right, as in join_above). */
static void join_seam(run_t *runs, ptrdiff_t above, ptrdiff_t above_end, ptrdiff_t below, ptrdiff_t below_end)
{
    for (; below < below_end; below++) {
        const int32_t x0 = runs[below].x0, x1 = runs[below].x1;
        while (above < above_end && runs[above].x1 + 1 < x0)
            above++;
        ptrdiff_t k = above;
        for (; k < above_end && runs[k].x0 <= x1 + 1; k++)
            join_runs(runs, (int32_t)below, (int32_t)k);
        if (k > above)
            above = k - 1; /* only the last run touched may also touch the next run below */
    }
}

#ifdef IRST_THREADS
#include <pthread.h>
static void *collect_runs_thread(void *band)
{
    collect_runs(band);
    return NULL;
}
#endif

/* Pass 1 over the whole map in `band_count` bands (band 0 on the calling thread, the others on threads of their
 * own where pthreads exist, else one after the other), then the merge into bands[0].runs. Returns the run
 * count, or -1 out of memory. */
static ptrdiff_t collect_all_runs(const irst_map *map, float threshold, int band_count, irst_workspace *ws)
{
    band_t *bands = ws->bands;
    for (int b = 0; b < band_count; b++) {
        bands[b].map = map;
        bands[b].threshold = threshold;
        bands[b].y_begin = map->height * b / band_count;
        bands[b].y_end = map->height * (b + 1) / band_count;
        bands[b].scan = ws->scan;
    }
#ifdef IRST_THREADS
    pthread_t threads[IRST_MAX_THREADS];
    int started[IRST_MAX_THREADS] = {0};
    for (int b = 1; b < band_count; b++)
        started[b] = pthread_create(&threads[b], NULL, collect_runs_thread, &bands[b]) == 0;
    collect_runs(&bands[0]);
    for (int b = 1; b < band_count; b++) {
        if (started[b])
            pthread_join(threads[b], NULL);
        else /* no thread to be had: scanned here */
            collect_runs(&bands[b]);
    }
#else
    for (int b = 0; b < band_count; b++)
        collect_runs(&bands[b]);
#endif
    ptrdiff_t total = 0;
    for (int b = 0; b < band_count; b++) {
        if (bands[b].status != IRST_OK)
            return -1;
        total += bands[b].count;
    }
    if (band_count == 1)
        return total;
    if (reserve((void **)&bands[0].runs, &bands[0].run_capacity, total, sizeof(run_t), FIRST_RUN_CAPACITY) != 0)
        return -1;
    run_t *runs = bands[0].runs;
    ptrdiff_t offset = bands[0].count, upper_row = bands[0].last_row_begin;
    for (int b = 1; b < band_count; b++) {
        const band_t *band = &bands[b];
        for (ptrdiff_t i = 0; i < band->count; i++) {
            runs[offset + i] = band->runs[i];
            runs[offset + i].link += (int32_t)offset;
        }
        join_seam(runs, upper_row, offset, offset, offset + band->first_row_end);
        /* A band's last row is its first when it has one row: upper_row then starts at its first run. */
        upper_row = offset + band->last_row_begin;
        offset += band->count;
    }
    return total;
}

/* The per-pixel helpers must melt into the pass-2 loop: left as calls, dense maps take 20 % longer. */
#if defined(__GNUC__)
#define ALWAYS_INLINE inline __attribute__((always_inline))
#else
#define ALWAYS_INLINE inline
#endif

static ALWAYS_INLINE void add_weight(weight_sums *sums, float v, double x, double y, double weight_origin)
{
    const double weight = (double)v - weight_origin;
    sums->weight += weight;
    sums->weight_x += weight * x;
    sums->weight_y += weight * y;
}

/* `yes` if `condition`, else `no`, through a mask: gcc compiles the `?:` form of the peak position updates as a
 * branch, which mispredicts wherever a pixel or a run beats its target's peak so far, at random. */
static ALWAYS_INLINE int32_t select_int32(int condition, int32_t yes, int32_t no)
{
    return no ^ ((no ^ yes) & -(int32_t)(condition != 0));
}

/* Adds one pixel's logit to the accumulator (the sums that need the value; the integer ones are per run). */
static ALWAYS_INLINE void add_pixel(accumulator *a, int32_t x, int32_t y, float v, double weight_origin)
{
    a->sum_logit += (double)v;
    const int higher = v > a->peak;
    a->peak = higher ? v : a->peak;
    a->peak_x = select_int32(higher, x, a->peak_x);
    a->peak_y = select_int32(higher, y, a->peak_y);
    if (v == INFINITY) { /* an infinite weight: counted apart, see the header */
        a->inf_count++;
        a->inf_sum_x += x;
        a->inf_sum_y += y;
    } else {
        add_weight(&a->weights, v, (double)x, (double)y, weight_origin);
    }
}

/* Adds the pixels of one run to its component's accumulator. The running sums grow in the same order as pixel
 * by pixel into the component, so they are bit-identical to a raster-order reference. */
static ALWAYS_INLINE void add_run_pixels(accumulator *a, const run_t run, const float *row, ptrdiff_t step,
                                  double weight_origin)
{
    if (run.x0 == run.x1) { /* single-pixel runs dominate dense noise: no loop, no multiply */
        const float v = row[run.x0 * step]; /* loaded first: its latency hides behind the integer sums */
        a->size++;
        a->sum_x += run.x0;
        a->sum_y += run.y;
        if (run.x0 < a->x_min)
            a->x_min = run.x0;
        if (run.x0 > a->x_max)
            a->x_max = run.x0;
        a->y_max = run.y;
        add_pixel(a, run.x0, run.y, v, weight_origin);
        return;
    }
    const uint64_t length = (uint64_t)(run.x1 - run.x0) + 1;
    a->size += (int64_t)length;
    a->sum_x += (int64_t)(((uint64_t)run.x0 + (uint64_t)run.x1) * length / 2);
    a->sum_y += (int64_t)run.y * (int64_t)length;
    if (run.x0 < a->x_min)
        a->x_min = run.x0;
    if (run.x1 > a->x_max)
        a->x_max = run.x1;
    a->y_max = run.y;
    if (a->peak != INFINITY) {
        /* The run's sums in locals, and the peak as a running maximum whose column follows it through selects:
         * a third fewer instructions per pixel than add_pixel(). A run holding +inf is then redone pixel by
         * pixel from the sums before it (the locals are dropped), as is every run of a target that holds one. */
        weight_sums weights = a->weights;
        double sum_logit = a->sum_logit, x_value = (double)run.x0;
        const double y_value = (double)run.y;
        float peak = a->peak;
        int32_t peak_x = a->peak_x;
        for (int32_t x = run.x0; x <= run.x1; x++, x_value += 1.0) { /* x_value == (double)x, exactly */
            const float v = row[x * step];
            const int higher = v > peak;
            peak = higher ? v : peak;
            peak_x = higher ? x : peak_x;
            sum_logit += (double)v;
            add_weight(&weights, v, x_value, y_value, weight_origin);
        }
        if (peak != INFINITY) {
            a->peak_y = select_int32(peak > a->peak, run.y, a->peak_y);
            a->peak = peak;
            a->peak_x = peak_x;
            a->sum_logit = sum_logit;
            a->weights = weights;
            return;
        }
    }
    int32_t x = run.x0;
    do /* a run holds at least one pixel */
        add_pixel(a, x, run.y, row[x * step], weight_origin);
    while (++x <= run.x1);
}

/* Pass 2: numbers the components 1..count in the order of their root (first) runs, and accumulates their
 * statistics from the pixels of the runs, visited in raster order; writes the label image if asked. Returns the
 * number of components, or -1 out of memory.
 * Numbering: a run's parent has a lower index, so it already holds its label (in `link`) when the run is reached.
 * The accumulator of the component being fed is a local copy (kept in registers: the map is float like the peak,
 * so a pointer into the slots would be reloaded at every pixel), written back when the component changes: on
 * dense maps consecutive runs mostly belong to the same large component. */
static ptrdiff_t measure_components(const irst_map *map, float threshold, irst_workspace *ws, ptrdiff_t run_count,
                                    int32_t *labels)
{
    const double weight_origin = (double)threshold;
    run_t *runs = ws->bands[0].runs;
    accumulator current;
    int32_t count = 0, current_label = 0;
    for (ptrdiff_t i = 0; i < run_count; i++) {
        const int32_t parent = runs[i].link;
        const int32_t label = parent == (int32_t)i ? count + 1 : runs[parent].link;
        const run_t run = {runs[i].x0, runs[i].x1, runs[i].y, label};
        runs[i].link = label;
        if (label != current_label) {
            if (current_label)
                ws->slots[current_label - 1].acc = current;
            current_label = label;
            if (label > count) { /* a new component, starting at this run */
                if (reserve((void **)&ws->slots, &ws->slot_capacity, label, sizeof(slot_t), 16) != 0)
                    return -1;
                count = label;
                current = (accumulator){0};
                current.peak = -INFINITY;
                current.x_min = run.x0;
                current.x_max = run.x1;
                current.y_min = run.y;
            } else {
                current = ws->slots[label - 1].acc;
            }
        }
        const float *row = map->data + (ptrdiff_t)run.y * map->row_stride;
        if (map->col_stride == 1) /* a constant stride spares the compiler's stride-1 loop versioning per run */
            add_run_pixels(&current, run, row, 1, weight_origin);
        else
            add_run_pixels(&current, run, row, map->col_stride, weight_origin);
        if (labels) {
            int32_t *out = labels + (ptrdiff_t)run.y * map->width;
            for (int32_t x = run.x0; x <= run.x1; x++)
                out[x] = label;
        }
    }
    if (current_label)
        ws->slots[current_label - 1].acc = current;
    return count;
}

/* Replaces a slot's accumulator by the target's record. */
static void finish(slot_t *slot, int64_t label)
{
    const accumulator a = slot->acc;
    irst_target *t = &slot->target;
    const double size = (double)a.size;
    t->label = label;
    t->size = a.size;
    t->x = (double)a.sum_x / size;
    t->y = (double)a.sum_y / size;
    if (a.inf_count > 0) {
        t->weighted_x = (double)a.inf_sum_x / (double)a.inf_count;
        t->weighted_y = (double)a.inf_sum_y / (double)a.inf_count;
    } else { /* every weight is > 0 (logit > threshold), so weights.weight > 0 */
        t->weighted_x = a.weights.weight_x / a.weights.weight;
        t->weighted_y = a.weights.weight_y / a.weights.weight;
    }
    t->x_min = a.x_min;
    t->y_min = a.y_min;
    t->x_max = a.x_max;
    t->y_max = a.y_max;
    t->aspect_ratio = (double)(a.x_max - a.x_min + 1) / (double)(a.y_max - a.y_min + 1);
    t->peak_logit = (double)a.peak;
    t->peak_x = a.peak_x;
    t->peak_y = a.peak_y;
    t->mean_logit = a.sum_logit / size;
}

irst_workspace *irst_workspace_new(void)
{
    irst_workspace *ws = calloc(1, sizeof(irst_workspace));
    if (ws) {
        ws->scan = fastest_scan();
        ws->last_run_count = -1;
    }
    return ws;
}

ptrdiff_t irst_last_run_count(const irst_workspace *ws)
{
    return ws->last_run_count;
}

const char *irst_scan_name(void)
{
    return fastest_scan().name;
}

void irst_workspace_free(irst_workspace *ws)
{
    if (ws) {
        for (int b = 0; b < IRST_MAX_THREADS; b++) {
            free(ws->bands[b].runs);
            free(ws->bands[b].words);
        }
        free(ws->slots);
        free(ws);
    }
}

static int within(double value, double low, double high, int inclusive)
{
    return inclusive ? low <= value && value <= high : low < value && value < high;
}

/* Moves the targets that pass the filter to the front, in order; returns how many. */
static ptrdiff_t apply_filter(const irst_filter *filter, slot_t *slots, ptrdiff_t count)
{
    ptrdiff_t kept = 0;
    for (ptrdiff_t k = 0; k < count; k++) {
        const irst_target *t = &slots[k].target;
        if (within((double)t->size, filter->size_min, filter->size_max, filter->inclusive) &&
            within(t->aspect_ratio, filter->ratio_min, filter->ratio_max, filter->inclusive)) {
            if (kept != k)
                slots[kept].target = *t;
            kept++;
        }
    }
    return kept;
}

int irst_label(const irst_map *map, float threshold, int32_t *labels, const irst_filter *filter, int threads,
               irst_workspace *ws, irst_result *result)
{
    result->targets = NULL;
    result->count = 0;
    if (map->height <= 0 || map->width <= 0)
        return IRST_OK;
    if (map->height > IRST_MAX_PIXELS / map->width)
        return IRST_TOO_LARGE;

    int band_count = threads < 1 ? 1 : threads > IRST_MAX_THREADS ? IRST_MAX_THREADS : threads;
    if (band_count > map->height)
        band_count = (int)map->height;
    if (band_count > ws->bands_held) /* before the work, so a call that fails part-way is still covered */
        ws->bands_held = band_count;
    const ptrdiff_t run_count = collect_all_runs(map, threshold, band_count, ws);
    if (run_count < 0)
        return IRST_NO_MEMORY;
    const ptrdiff_t count = measure_components(map, threshold, ws, run_count, labels);
    if (count < 0)
        return IRST_NO_MEMORY;
    ws->last_run_count = run_count;
    for (ptrdiff_t k = 0; k < count; k++)
        finish(&ws->slots[k], (int64_t)k + 1);
    const ptrdiff_t kept = filter ? apply_filter(filter, ws->slots, count) : count;
    /* The buffers of every band that may have grown, used this call or not: after a dense frame on many bands,
     * the frames that follow on fewer (threads="auto" gives small maps one) would otherwise keep the others' for
     * the thread's life. */
    const ptrdiff_t words_used = band_words(map->width);
    for (int b = 0; b < ws->bands_held; b++) {
        band_t *band = &ws->bands[b];
        const int used = b < band_count;
        /* band 0 held every run; the others only their own */
        shrink_excess((void **)&band->runs, &band->run_capacity, b ? (used ? band->count : 0) : run_count,
                      sizeof(run_t));
        shrink_excess((void **)&band->words, &band->word_capacity, used ? words_used : 0, sizeof(uint64_t));
    }
    ws->bands_held = band_count;
    shrink_excess((void **)&ws->slots, &ws->slot_capacity, count, sizeof(slot_t));
    result->targets = kept ? &ws->slots[0].target : NULL;
    result->count = kept;
    return IRST_OK;
}

