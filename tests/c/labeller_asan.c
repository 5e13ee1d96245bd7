/* Standalone driver for irst_label() under AddressSanitizer + UndefinedBehaviorSanitizer.
 *
 * Labels many random maps (sparse, dense, checkerboard, all-on, stripes, NaN/inf sprinkled; shapes from 1x1 to
 * 70x200 including 1xN, Nx1 and widths around the 64-pixel word size, and rows of 64 words and more, 3 x 4160 at
 * most; contiguous, strided, transposed and reversed views; one workspace reused across maps, so its buffers grow
 * and shrink; 1 to 5 row bands on as many threads) and checks every label and every statistic against a naive 8-connected flood fill written here, bit
 * for bit, and the target filter against the same reference filtered here.
 *
 *   cc -std=c99 -pthread -g -O1 -fsanitize=address,undefined -fno-sanitize-recover=all \
 *      -I edge_irst/postprocess tests/c/labeller_asan.c edge_irst/postprocess/labeller_core.c -o labeller_asan
 *   ./labeller_asan [maps]          prints "ok: N maps, P pixels, T targets, S scan" and exits 0, or reports and
 *                                   exits 1 (S: the instruction set the scan ran, see irst_scan_name())
 *
 * tests/test_postprocess.py compiles and runs it (also with -DIRST_PORTABLE, the non-SIMD scan, with
 * -DIRST_NO_AVX512, the AVX2 scan where the CPU has AVX-512, and with -DIRST_NO_AVX2, the SSE2 scan).
 */
#include "labeller_core.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static uint64_t rng_state = 0x9E3779B97F4A7C15u;

static uint64_t next_random(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

static int random_below(int n)
{
    return (int)(next_random() % (uint64_t)n);
}

static double random_unit(void)
{
    return (double)(next_random() >> 11) / 9007199254740992.0;
}

/* RARE: mostly empty rows between a few targets (the scan skips background rows in blocks of 64 pixels). */
enum { RARE, SPARSE, MEDIUM, HALF, MOSTLY_ON, CHECKERBOARD, ALL_ON, ALL_OFF, STRIPES, KINDS };

/* Logit of pixel (y, x) of a map of this kind: > 0 is foreground at threshold 0, with some special values. */
static float make_logit(int kind, int y, int x)
{
    static const double density[KINDS] = {0.002, 0.02, 0.2, 0.5, 0.9, 0, 1, 0, 0};
    int on;
    if (kind == CHECKERBOARD)
        on = (x + y) % 2 == 0;
    else if (kind == STRIPES)
        on = x % 3 != 0;
    else
        on = random_unit() < density[kind];
    const int special = random_below(200);
    if (special == 0)
        return NAN;
    if (special == 1)
        return on ? INFINITY : -INFINITY;
    if (special == 2)
        return on ? 3.0e38f : -3.0e38f;
    if (special == 3 || special == 4) /* ties for the peak and its first position */
        return on ? 7.0f : -7.0f;
    if (special == 5) /* signed zeros: foreground under a negative threshold */
        return random_below(2) ? 0.0f : -0.0f;
    return on ? (float)(0.001 + 20.0 * random_unit()) : (float)(-20.0 * random_unit());
}

/* Reference labelling: scan in raster order, flood-fill every unlabelled foreground pixel (8 neighbours). */
static int flood_fill(const irst_map *m, float t, int32_t *labels, ptrdiff_t *stack)
{
    const ptrdiff_t h = m->height, w = m->width;
    int count = 0;
    memset(labels, 0, (size_t)(h * w) * sizeof *labels);
    for (ptrdiff_t start = 0; start < h * w; start++) {
        const float v0 = m->data[(start / w) * m->row_stride + (start % w) * m->col_stride];
        if (!(v0 > t) || labels[start])
            continue;
        labels[start] = ++count;
        ptrdiff_t top = 0;
        stack[top++] = start;
        while (top) {
            const ptrdiff_t p = stack[--top], py = p / w, px = p % w;
            for (ptrdiff_t dy = -1; dy <= 1; dy++)
                for (ptrdiff_t dx = -1; dx <= 1; dx++) {
                    const ptrdiff_t qy = py + dy, qx = px + dx;
                    if (qy < 0 || qy >= h || qx < 0 || qx >= w || labels[qy * w + qx])
                        continue;
                    if (m->data[qy * m->row_stride + qx * m->col_stride] > t) {
                        labels[qy * w + qx] = count;
                        stack[top++] = qy * w + qx;
                    }
                }
        }
    }
    return count;
}

/* Reference statistics from the reference labels, summed pixel by pixel in raster order. */
static void reference_targets(const irst_map *m, float t, const int32_t *labels, int count, irst_target *out)
{
    const ptrdiff_t h = m->height, w = m->width;
    for (int k = 0; k < count; k++) {
        int64_t size = 0, sum_x = 0, sum_y = 0, inf_n = 0, inf_x = 0, inf_y = 0;
        double sw = 0, swx = 0, swy = 0, sl = 0;
        float peak = -INFINITY;
        ptrdiff_t px = 0, py = 0, x0 = w, x1 = -1, y0 = h, y1 = -1;
        for (ptrdiff_t y = 0; y < h; y++)
            for (ptrdiff_t x = 0; x < w; x++) {
                if (labels[y * w + x] != k + 1)
                    continue;
                const float v = m->data[y * m->row_stride + x * m->col_stride];
                size++;
                sum_x += x;
                sum_y += y;
                sl += (double)v;
                if (v > peak) {
                    peak = v;
                    px = x;
                    py = y;
                }
                if (v == INFINITY) {
                    inf_n++;
                    inf_x += x;
                    inf_y += y;
                } else {
                    const double weight = (double)v - (double)t;
                    sw += weight;
                    swx += weight * (double)x;
                    swy += weight * (double)y;
                }
                x0 = x < x0 ? x : x0;
                x1 = x > x1 ? x : x1;
                y0 = y < y0 ? y : y0;
                y1 = y > y1 ? y : y1;
            }
        irst_target *r = &out[k];
        r->label = k + 1;
        r->size = size;
        r->x = (double)sum_x / (double)size;
        r->y = (double)sum_y / (double)size;
        r->weighted_x = inf_n ? (double)inf_x / (double)inf_n : swx / sw;
        r->weighted_y = inf_n ? (double)inf_y / (double)inf_n : swy / sw;
        r->x_min = (double)x0;
        r->y_min = (double)y0;
        r->x_max = (double)x1;
        r->y_max = (double)y1;
        r->aspect_ratio = (double)(x1 - x0 + 1) / (double)(y1 - y0 + 1);
        r->peak_logit = (double)peak;
        r->peak_x = (double)px;
        r->peak_y = (double)py;
        r->mean_logit = sl / (double)size;
    }
}

static int same_double(double a, double b)
{
    return memcmp(&a, &b, sizeof a) == 0; /* bit for bit */
}

static int compare_targets(const irst_target *got, const irst_target *want, ptrdiff_t count, const char *what)
{
    for (ptrdiff_t k = 0; k < count; k++) {
#define CHECK_INT(name)                                                                                         \
    if (got[k].name != want[k].name) {                                                                          \
        fprintf(stderr, "%s: target %td field " #name ": got %lld, want %lld\n", what, k,                       \
                (long long)got[k].name, (long long)want[k].name);                                               \
        return 0;                                                                                               \
    }
#define CHECK_REAL(name)                                                                                        \
    if (!same_double(got[k].name, want[k].name)) {                                                              \
        fprintf(stderr, "%s: target %td field " #name ": got %.17g, want %.17g\n", what, k, got[k].name,        \
                want[k].name);                                                                                  \
        return 0;                                                                                               \
    }
        IRST_TARGET_FIELDS(CHECK_INT, CHECK_REAL)
#undef CHECK_INT
#undef CHECK_REAL
    }
    return 1;
}

static int passes(double value, double low, double high, int inclusive)
{
    if (inclusive)
        return value >= low && value <= high;
    return value > low && value < high;
}

/* A random target filter: the kept targets are the reference targets that pass it, in order, labels unchanged. */
static int check_filter(const irst_map *m, float threshold, irst_workspace *ws, const irst_target *want, int count)
{
    static const double sizes[] = {-INFINITY, 0, 1, 2, 5, 100, INFINITY};
    static const double ratios[] = {-INFINITY, 0.2, 0.5, 1, 2, 5, INFINITY};
    irst_filter filter = {sizes[random_below(4)], sizes[3 + random_below(4)], ratios[random_below(4)],
                          ratios[3 + random_below(4)], random_below(2)};
    irst_result result;
    if (irst_label(m, threshold, NULL, &filter, 1 + random_below(5), ws, &result) != IRST_OK)
        return 0;
    ptrdiff_t kept = 0;
    for (int k = 0; k < count; k++) {
        if (!passes((double)want[k].size, filter.size_min, filter.size_max, filter.inclusive) ||
            !passes(want[k].aspect_ratio, filter.ratio_min, filter.ratio_max, filter.inclusive))
            continue;
        if (kept >= result.count || !compare_targets(&result.targets[kept], &want[k], 1, "filtered"))
            return 0;
        kept++;
    }
    if (kept != result.count) {
        fprintf(stderr, "filter kept %td targets, the reference %td\n", result.count, kept);
        return 0;
    }
    return 1;
}

/* One map: random kind and shape, laid out in `storage` as a contiguous, strided, transposed or reversed view. */
static int check_one(irst_workspace *ws, float *storage, int32_t *labels, int32_t *want_labels, ptrdiff_t *stack,
                     irst_target *want, long *pixels, long *targets)
{
    static const int widths[] = {1, 2, 63, 64, 65, 127, 128, 129, 200};
    /* Rows of 64 words and more: pass 1's bit set of the words worth a look goes on into a second 64-bit word. */
    static const int wide_widths[] = {4031, 4032, 4095, 4096, 4097, 4159, 4160};
    const int kind = random_below(KINDS);
    ptrdiff_t h = 1 + random_below(70), w = 1 + random_below(200);
    if (random_below(4) == 0)
        w = widths[random_below((int)(sizeof widths / sizeof *widths))];
    if (random_below(10) == 0)
        h = 1;
    else if (random_below(10) == 0)
        w = 1;
    else if (random_below(10) == 0) { /* at most 3 rows: within the buffers sized for 70 x 200 */
        w = wide_widths[random_below((int)(sizeof wide_widths / sizeof *wide_widths))];
        h = 1 + random_below(3);
    }
    const int layout = random_below(4);
    const ptrdiff_t step = 1 + random_below(3); /* column step of the strided layout */
    irst_map m = {NULL, h, w, 0, 0};
    if (layout == 0) { /* contiguous */
        m.data = storage;
        m.row_stride = w;
        m.col_stride = 1;
    } else if (layout == 1) { /* every step-th column of every second row of a larger array */
        m.data = storage;
        m.row_stride = 2 * w * step;
        m.col_stride = step;
    } else if (layout == 2) { /* transposed: the map's rows are the storage's columns */
        m.data = storage;
        m.row_stride = 1;
        m.col_stride = h;
    } else { /* both axes reversed */
        m.data = storage + (h - 1) * w + (w - 1);
        m.row_stride = -w;
        m.col_stride = -1;
    }
    float *writable = (float *)m.data;
    for (ptrdiff_t y = 0; y < h; y++)
        for (ptrdiff_t x = 0; x < w; x++)
            writable[y * m.row_stride + x * m.col_stride] = make_logit(kind, (int)y, (int)x);
    const float threshold = random_below(4) == 0 ? (float)(random_unit() * 10.0 - 5.0) : 0.0f;

    const int count = flood_fill(&m, threshold, want_labels, stack);
    reference_targets(&m, threshold, want_labels, count, want);

    irst_result result;
    memset(labels, 0, (size_t)(h * w) * sizeof *labels);
    const int threads = 1 + random_below(5);
    if (irst_label(&m, threshold, labels, NULL, threads, ws, &result) != IRST_OK) {
        fprintf(stderr, "irst_label failed on a %tdx%td map (%d threads)\n", h, w, threads);
        return 0;
    }
    if (result.count != count) {
        fprintf(stderr, "kind %d layout %d %tdx%td, %d threads: %td targets, flood fill finds %d\n", kind, layout,
                h, w, threads, result.count, count);
        return 0;
    }
    if (memcmp(labels, want_labels, (size_t)(h * w) * sizeof *labels) != 0) {
        fprintf(stderr, "kind %d layout %d %tdx%td, %d threads: label images differ\n", kind, layout, h, w, threads);
        return 0;
    }
    if (!compare_targets(result.targets, want, count, "with labels"))
        return 0;
    /* Again without a label image, and once in a while with a fresh workspace. */
    irst_workspace *fresh = random_below(8) == 0 ? irst_workspace_new() : NULL;
    if (irst_label(&m, threshold, NULL, NULL, 1 + random_below(5), fresh ? fresh : ws, &result) != IRST_OK ||
        result.count != count ||
        !compare_targets(result.targets, want, count, "without labels")) {
        irst_workspace_free(fresh);
        return 0;
    }
    irst_workspace_free(fresh);
    if (!check_filter(&m, threshold, ws, want, count))
        return 0;
    *pixels += (long)(h * w);
    *targets += count;
    return 1;
}

int main(int argc, char **argv)
{
    const int maps = argc > 1 ? atoi(argv[1]) : 1500;
    const ptrdiff_t most = 70 * 200;
    float *storage = malloc((size_t)(2 * 3 * most) * sizeof *storage); /* room for the strided layout */
    int32_t *labels = malloc((size_t)most * sizeof *labels);
    int32_t *want_labels = malloc((size_t)most * sizeof *want_labels);
    ptrdiff_t *stack = malloc((size_t)most * sizeof *stack);
    irst_target *want = malloc((size_t)most * sizeof *want);
    irst_workspace *ws = irst_workspace_new();
    if (!storage || !labels || !want_labels || !stack || !want || !ws) {
        fprintf(stderr, "out of memory\n");
        return 2;
    }
    long pixels = 0, targets = 0;
    int ok = 1;
    for (int i = 0; i < maps && ok; i++)
        ok = check_one(ws, storage, labels, want_labels, stack, want, &pixels, &targets);

    /* The empty map and a map with no foreground. */
    irst_result result;
    const irst_map empty = {storage, 0, 5, 5, 1};
    ok = ok && irst_label(&empty, 0.0f, NULL, NULL, 4, ws, &result) == IRST_OK && result.count == 0;

    irst_workspace_free(ws);
    free(storage);
    free(labels);
    free(want_labels);
    free(stack);
    free(want);
    if (!ok)
        return 1;
    printf("ok: %d maps, %ld pixels, %ld targets, %s scan\n", maps, pixels, targets, irst_scan_name());
    return 0;
}
