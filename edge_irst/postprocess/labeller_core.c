/* Run-based eight-connected labelling with fused thresholding and statistics (contract in labeller_core.h).
 *
 * Why runs: IR logit maps are very sparse (a few targets in 65 k .. 2 M pixels). One pass scans each row,
 * skipping background sixteen pixels at a time, and records the foreground runs [x0, x1] of the row. A run joins
 * every run of the previous row that it touches under the eight-neighbour rule (a0 <= b1 + 1 and b0 <= a1 + 1),
 * through a union-find over runs whose root is always the lowest run index, i.e. the component's first run in
 * raster order. A second pass over the runs only (not the image) numbers the components and accumulates their
 * statistics from the pixels of the runs. Work and memory grow with the foreground, not with the image.
 */
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

typedef struct {
    run_t *items;
    ptrdiff_t count, capacity;
} run_list;

typedef struct {
    int64_t size, sum_x, sum_y, inf_count, inf_sum_x, inf_sum_y;
    double sum_weight, sum_weight_x, sum_weight_y, sum_logit;
    float peak;
    int32_t peak_x, peak_y, x_min, x_max, y_min, y_max;
} accumulator;

/* Pixels tested together while skipping; a fixed-count inner loop that gcc/clang turn into SIMD compares on
 * SSE2 and NEON without intrinsics. */
#define SKIP_BLOCK 16
#define FIRST_RUN_CAPACITY 1024

/* First x >= start on the row with value > t, or width. `!(v > t)` keeps NaN in the background. */
static inline ptrdiff_t next_foreground(const float *row, ptrdiff_t step, ptrdiff_t x, ptrdiff_t width, float t)
{
    if (step == 1) {
        while (x + SKIP_BLOCK <= width) {
            int any = 0;
            for (int k = 0; k < SKIP_BLOCK; k++)
                any |= row[x + k] > t;
            if (any)
                break;
            x += SKIP_BLOCK;
        }
        while (x < width && !(row[x] > t))
            x++;
    } else {
        while (x < width && !(row[x * step] > t))
            x++;
    }
    return x;
}

/* First x >= start on the row with !(value > t), or width. */
static inline ptrdiff_t next_background(const float *row, ptrdiff_t step, ptrdiff_t x, ptrdiff_t width, float t)
{
    if (step == 1) {
        while (x + SKIP_BLOCK <= width) {
            int all = 1;
            for (int k = 0; k < SKIP_BLOCK; k++)
                all &= row[x + k] > t;
            if (!all)
                break;
            x += SKIP_BLOCK;
        }
        while (x < width && row[x] > t)
            x++;
    } else {
        while (x < width && row[x * step] > t)
            x++;
    }
    return x;
}

/* Appends a run whose own index is its parent; grows the buffer geometrically. Returns 0, or -1 out of memory. */
static int append_run(run_list *list, ptrdiff_t x0, ptrdiff_t x1, ptrdiff_t y)
{
    if (list->count == list->capacity) {
        ptrdiff_t capacity = list->capacity ? 2 * list->capacity : FIRST_RUN_CAPACITY;
        if ((size_t)capacity > SIZE_MAX / sizeof(run_t))
            return -1;
        run_t *grown = realloc(list->items, (size_t)capacity * sizeof(run_t));
        if (!grown)
            return -1;
        list->items = grown;
        list->capacity = capacity;
    }
    run_t *run = &list->items[list->count];
    run->x0 = (int32_t)x0;
    run->x1 = (int32_t)x1;
    run->y = (int32_t)y;
    run->link = (int32_t)list->count;
    list->count++;
    return 0;
}

/* Root of run i, halving the path on the way (every parent has a lower index, so the invariant holds). */
static inline int32_t find_root(run_t *runs, int32_t i)
{
    while (runs[i].link != i) {
        int32_t grandparent = runs[runs[i].link].link;
        runs[i].link = grandparent;
        i = grandparent;
    }
    return i;
}

/* Joins the components of runs a and b under the lower root index (= the earlier first pixel). */
static inline void unite(run_t *runs, int32_t a, int32_t b)
{
    int32_t root_a = find_root(runs, a), root_b = find_root(runs, b);
    if (root_a < root_b)
        runs[root_b].link = root_a;
    else if (root_b < root_a)
        runs[root_a].link = root_b;
}

/* Pass 1: runs of every row, united with the runs of the row above that they touch. */
static int collect_runs(const irst_map *map, float threshold, run_list *runs)
{
    const ptrdiff_t width = map->width, step = map->col_stride;
    ptrdiff_t above_begin = 0, above_end = 0;
    for (ptrdiff_t y = 0; y < map->height; y++) {
        const float *row = map->data + y * map->row_stride;
        const ptrdiff_t row_begin = runs->count;
        ptrdiff_t above = above_begin; /* first run above that may still touch a run of this row */
        ptrdiff_t x = next_foreground(row, step, 0, width, threshold);
        while (x < width) {
            const ptrdiff_t end = next_background(row, step, x + 1, width, threshold); /* run is x..end-1 */
            if (append_run(runs, x, end - 1, y) != 0)
                return IRST_NO_MEMORY;
            run_t *items = runs->items;
            const int32_t current = (int32_t)(runs->count - 1);
            while (above < above_end && items[above].x1 + 1 < x)
                above++;
            for (ptrdiff_t k = above; k < above_end && items[k].x0 <= end; k++)
                unite(items, (int32_t)k, current);
            /* `above` stays: the last run touched may also touch the next run of this row. */
            x = next_foreground(row, step, end + 1, width, threshold);
        }
        above_begin = row_begin;
        above_end = runs->count;
    }
    return IRST_OK;
}

/* Numbers the components 1..count in the order of their root (first) runs; each run's link becomes its label.
 * A run's parent has a lower index, so it is already numbered when the run is reached. */
static int32_t number_components(run_t *runs, ptrdiff_t run_count)
{
    int32_t count = 0;
    for (ptrdiff_t i = 0; i < run_count; i++) {
        const int32_t parent = runs[i].link;
        runs[i].link = parent == (int32_t)i ? ++count : runs[parent].link;
    }
    return count;
}

/* Pass 2: statistics from the pixels of the runs, visited in raster order; writes the label image if asked. */
static void accumulate(const irst_map *map, float threshold, const run_t *runs, ptrdiff_t run_count,
                       accumulator *acc, int32_t *labels)
{
    const double weight_origin = (double)threshold;
    const ptrdiff_t step = map->col_stride;
    int32_t seen = 0;
    for (ptrdiff_t i = 0; i < run_count; i++) {
        const run_t run = runs[i];
        accumulator *a = &acc[run.link - 1];
        if (run.link > seen) { /* the component's first run: labels appear in increasing order */
            seen = run.link;
            memset(a, 0, sizeof *a);
            a->peak = -INFINITY;
            a->x_min = run.x0;
            a->x_max = run.x1;
            a->y_min = run.y;
        }
        const int64_t length = (int64_t)run.x1 - run.x0 + 1;
        a->size += length;
        a->sum_x += ((int64_t)run.x0 + run.x1) * length / 2;
        a->sum_y += (int64_t)run.y * length;
        if (run.x0 < a->x_min)
            a->x_min = run.x0;
        if (run.x1 > a->x_max)
            a->x_max = run.x1;
        a->y_max = run.y;

        /* Local copies of the running sums: the additions happen in the same order as pixel by pixel into the
         * component, so the result is bit-identical to a raster-order reference. */
        double sum_weight = a->sum_weight, sum_weight_x = a->sum_weight_x, sum_weight_y = a->sum_weight_y;
        double sum_logit = a->sum_logit;
        const float *row = map->data + (ptrdiff_t)run.y * map->row_stride;
        for (int32_t x = run.x0; x <= run.x1; x++) {
            const float v = row[x * step];
            sum_logit += (double)v;
            if (v > a->peak) {
                a->peak = v;
                a->peak_x = x;
                a->peak_y = run.y;
            }
            if (v == INFINITY) { /* an infinite weight: counted apart, see the header */
                a->inf_count++;
                a->inf_sum_x += x;
                a->inf_sum_y += run.y;
            } else {
                const double weight = (double)v - weight_origin;
                sum_weight += weight;
                sum_weight_x += weight * (double)x;
                sum_weight_y += weight * (double)run.y;
            }
        }
        a->sum_weight = sum_weight;
        a->sum_weight_x = sum_weight_x;
        a->sum_weight_y = sum_weight_y;
        a->sum_logit = sum_logit;

        if (labels) {
            int32_t *out = labels + (ptrdiff_t)run.y * map->width;
            for (int32_t x = run.x0; x <= run.x1; x++)
                out[x] = run.link;
        }
    }
}

static void finish(const accumulator *a, int64_t label, irst_target *t)
{
    const double size = (double)a->size;
    t->label = label;
    t->size = a->size;
    t->x = (double)a->sum_x / size;
    t->y = (double)a->sum_y / size;
    if (a->inf_count > 0) {
        t->weighted_x = (double)a->inf_sum_x / (double)a->inf_count;
        t->weighted_y = (double)a->inf_sum_y / (double)a->inf_count;
    } else { /* every weight is > 0 (logit > threshold), so sum_weight > 0 */
        t->weighted_x = a->sum_weight_x / a->sum_weight;
        t->weighted_y = a->sum_weight_y / a->sum_weight;
    }
    t->x_min = a->x_min;
    t->y_min = a->y_min;
    t->x_max = a->x_max;
    t->y_max = a->y_max;
    t->aspect_ratio = (double)(a->x_max - a->x_min + 1) / (double)(a->y_max - a->y_min + 1);
    t->peak_logit = (double)a->peak;
    t->peak_x = a->peak_x;
    t->peak_y = a->peak_y;
    t->mean_logit = a->sum_logit / size;
}

int irst_label(const irst_map *map, float threshold, int32_t *labels, irst_result *result)
{
    result->targets = NULL;
    result->count = 0;
    if (map->height <= 0 || map->width <= 0)
        return IRST_OK;
    if (map->height > IRST_MAX_PIXELS / map->width)
        return IRST_TOO_LARGE;

    run_list runs = {NULL, 0, 0};
    int status = collect_runs(map, threshold, &runs);
    if (status != IRST_OK) {
        free(runs.items);
        return status;
    }
    const int32_t count = number_components(runs.items, runs.count);
    if (count == 0) {
        free(runs.items);
        return IRST_OK;
    }
    accumulator *acc = malloc((size_t)count * sizeof *acc);
    irst_target *targets = malloc((size_t)count * sizeof *targets);
    if (!acc || !targets) {
        free(acc);
        free(targets);
        free(runs.items);
        return IRST_NO_MEMORY;
    }
    accumulate(map, threshold, runs.items, runs.count, acc, labels);
    for (int32_t k = 0; k < count; k++)
        finish(&acc[k], (int64_t)k + 1, &targets[k]);
    free(acc);
    free(runs.items);
    result->targets = targets;
    result->count = count;
    return IRST_OK;
}

void irst_result_free(irst_result *result)
{
    free(result->targets);
    result->targets = NULL;
    result->count = 0;
}
