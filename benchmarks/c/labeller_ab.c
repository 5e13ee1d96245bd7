/* A/B timing of two builds of the C labeller in one process: "base" (labeller_core.c of another revision, its
 * public symbols renamed with a base_ prefix at compile time) and "head" (the working tree's).
 *
 * benchmarks/labeller_ab.py writes the maps, compiles this driver with both cores and runs it; by hand:
 *   cc -std=c99 -O3 -ffp-contract=off -pthread -c -I BASE_DIR -Dirst_label=base_irst_label \
 *      -Dirst_workspace_new=base_irst_workspace_new -Dirst_workspace_free=base_irst_workspace_free \
 *      -Dirst_scan_name=base_irst_scan_name -Dirst_last_run_count=base_irst_last_run_count \
 *      BASE_DIR/labeller_core.c -o base.o
 *   cc -std=c99 -O3 -ffp-contract=off -pthread -I edge_irst/postprocess benchmarks/c/labeller_ab.c \
 *      edge_irst/postprocess/labeller_core.c base.o -o labeller_ab -lm
 *   ./labeller_ab ROUNDS SAMPLE_US NAME WIDTH HEIGHT FILE [NAME WIDTH HEIGHT FILE ...]
 *
 * FILE: one or more variants of a map kind, each width * height native float32 logits, row-major, one after the
 * other. Before each call the next variant is copied into one buffer (untimed), and the call alone is timed: a
 * labeller called on one map again and again gets faster as the branch predictor learns that map, which a
 * stream of new frames never allows. For each map kind: one JSON line with the medians of the per-sample
 * microseconds per call of base and head, the median of the per-round ratios head / base (each round times base
 * then head, back to back, so both see the same machine), and whether both returned the same records bit for bit
 * on every variant. Threshold 0, no label image, no filter, one thread.
 */
#define _POSIX_C_SOURCE 200809L
#include "labeller_core.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

irst_workspace *base_irst_workspace_new(void);
void base_irst_workspace_free(irst_workspace *ws);
int base_irst_label(const irst_map *map, float threshold, int32_t *labels, const irst_filter *filter, int threads,
                    irst_workspace *ws, irst_result *result);

typedef int (*label_fn)(const irst_map *, float, int32_t *, const irst_filter *, int, irst_workspace *,
                        irst_result *);

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec * 1e-3;
}

static int by_value(const void *a, const void *b)
{
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *values, int count)
{
    qsort(values, (size_t)count, sizeof *values, by_value);
    return count % 2 ? values[count / 2] : 0.5 * (values[count / 2 - 1] + values[count / 2]);
}

/* What bracketing a call with now_us() adds to the interval measured. */
static double timer_overhead_us(void)
{
    enum { PAIRS = 1001 };
    static double gaps[PAIRS];
    for (int i = 0; i < PAIRS; i++) {
        const double start = now_us();
        gaps[i] = now_us() - start;
    }
    return median(gaps, PAIRS);
}

typedef struct {
    const float *variants; /* `count` maps of `pixels` floats, back to back */
    int count;
    ptrdiff_t pixels;
    float *buffer;         /* what the timed call reads (map->data) */
    const irst_map *map;
} map_set;

/* Mean microseconds per call over `calls` calls on variants first, first + 1, ... (cyclically), each copied into
 * the buffer before its call (untimed), less the timer's overhead. */
static double sample(label_fn label, const map_set *set, int first, int calls, irst_workspace *ws, double overhead)
{
    irst_result result;
    double total = 0.0;
    for (int i = first; i < first + calls; i++) {
        memcpy(set->buffer, set->variants + (ptrdiff_t)(i % set->count) * set->pixels,
               (size_t)set->pixels * sizeof *set->buffer);
        const double start = now_us();
        label(set->map, 0.0f, NULL, NULL, 1, ws, &result);
        total += now_us() - start;
    }
    return total / calls - overhead;
}

static int same_records(const irst_result *a, const irst_result *b)
{
    return a->count == b->count &&
           (a->count == 0 || memcmp(a->targets, b->targets, (size_t)a->count * sizeof(irst_target)) == 0);
}

static int time_map(const char *name, ptrdiff_t width, ptrdiff_t height, const char *path, int rounds,
                    double sample_us, double overhead)
{
    const ptrdiff_t pixels = width * height;
    FILE *file = fopen(path, "rb");
    long bytes = -1;
    if (file && fseek(file, 0, SEEK_END) == 0)
        bytes = ftell(file);
    const int count = bytes > 0 && bytes % (long)(pixels * sizeof(float)) == 0 ? (int)(bytes / (pixels * 4)) : 0;
    float *variants = count ? malloc((size_t)bytes) : NULL;
    if (!variants || fseek(file, 0, SEEK_SET) != 0 || fread(variants, 1, (size_t)bytes, file) != (size_t)bytes) {
        fprintf(stderr, "%s: cannot read whole %td x %td float32 maps from %s\n", name, width, height, path);
        return 0;
    }
    fclose(file);
    float *buffer = malloc((size_t)pixels * sizeof *buffer);
    const irst_map map = {buffer, height, width, width, 1};
    const map_set set = {variants, count, pixels, buffer, &map};
    irst_workspace *base_ws = base_irst_workspace_new(), *head_ws = irst_workspace_new();
    double *base = malloc((size_t)rounds * sizeof *base), *head = malloc((size_t)rounds * sizeof *head);
    double *ratio = malloc((size_t)rounds * sizeof *ratio);
    if (!buffer || !base_ws || !head_ws || !base || !head || !ratio) {
        fprintf(stderr, "out of memory\n");
        return 0;
    }
    irst_result base_result, head_result;
    int same = 1;
    ptrdiff_t targets = 0;
    for (int v = 0; v < count; v++) {
        memcpy(buffer, variants + (ptrdiff_t)v * pixels, (size_t)pixels * sizeof *buffer);
        base_irst_label(&map, 0.0f, NULL, NULL, 1, base_ws, &base_result);
        irst_label(&map, 0.0f, NULL, NULL, 1, head_ws, &head_result);
        same = same && same_records(&base_result, &head_result);
        targets += head_result.count;
    }
    const double once = sample(irst_label, &set, 0, 3, head_ws, overhead);
    const int calls = 1 + (int)(sample_us / (once > 0.01 ? once : 0.01));
    for (int r = 0; r < rounds; r++) {
        base[r] = sample(base_irst_label, &set, r, calls, base_ws, overhead);
        head[r] = sample(irst_label, &set, r, calls, head_ws, overhead);
        ratio[r] = head[r] / base[r];
    }
    printf("{\"map\": \"%s\", \"width\": %td, \"height\": %td, \"variants\": %d, \"targets\": %.1f, "
           "\"calls_per_sample\": %d, \"base_us\": %.3f, \"head_us\": %.3f, \"head_over_base\": %.4f, "
           "\"same_records\": %s}\n",
           name, width, height, count, (double)targets / count, calls, median(base, rounds), median(head, rounds),
           median(ratio, rounds), same ? "true" : "false");
    fflush(stdout);
    base_irst_workspace_free(base_ws);
    irst_workspace_free(head_ws);
    free(base);
    free(head);
    free(ratio);
    free(buffer);
    free(variants);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 7 || (argc - 3) % 4 != 0) {
        fprintf(stderr, "usage: %s ROUNDS SAMPLE_US NAME WIDTH HEIGHT FILE [NAME WIDTH HEIGHT FILE ...]\n", argv[0]);
        return 2;
    }
    const int rounds = atoi(argv[1]);
    const double sample_us = atof(argv[2]);
    if (rounds < 1 || sample_us <= 0) {
        fprintf(stderr, "ROUNDS must be >= 1 and SAMPLE_US > 0\n");
        return 2;
    }
    const double overhead = timer_overhead_us();
    for (int i = 3; i < argc; i += 4)
        if (!time_map(argv[i], atol(argv[i + 1]), atol(argv[i + 2]), argv[i + 3], rounds, sample_us, overhead))
            return 1;
    return 0;
}
