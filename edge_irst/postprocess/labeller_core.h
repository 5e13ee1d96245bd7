/* Eight-connected labelling of `logit > threshold` on a float32 map, fused with per-target statistics.
 *
 * Plain C99, no Python, no numpy: the CPython binding (_labeller.c) and the AddressSanitizer driver
 * (tests/c/labeller_asan.c) both call irst_label().
 *
 * Coordinates: x = column, y = row, pixel centres at integer coordinates, origin at element (0, 0) of the map.
 * Targets are numbered 1..count in the raster order of their first pixel (row, then column).
 */
#ifndef EDGE_IRST_LABELLER_CORE_H
#define EDGE_IRST_LABELLER_CORE_H

#include <stddef.h>
#include <stdint.h>

/* The per-target record, one list for the C struct, the binding's output (column blocks in this order) and the
 * Python side (edge_irst/postprocess/records.py, checked against the TARGET_FIELDS the binding exports). INT
 * fields are int64 and come first, REAL fields are double; all 8 bytes wide, so the struct has no padding. */
#define IRST_TARGET_FIELDS(INT, REAL)                                                                           \
    INT(label) INT(size)                                                                                        \
    REAL(x) REAL(y) REAL(weighted_x) REAL(weighted_y)                                                           \
    REAL(x_min) REAL(y_min) REAL(x_max) REAL(y_max) REAL(aspect_ratio)                                          \
    REAL(peak_logit) REAL(peak_x) REAL(peak_y) REAL(mean_logit)

#define IRST_DECLARE_INT(name) int64_t name;
#define IRST_DECLARE_REAL(name) double name;
typedef struct {
    IRST_TARGET_FIELDS(IRST_DECLARE_INT, IRST_DECLARE_REAL)
} irst_target;
#undef IRST_DECLARE_INT
#undef IRST_DECLARE_REAL

/* A read-only 2-D view of float32 logits. Strides are in elements (not bytes) and may be negative (reversed
 * views) or anything else a strided array allows: element (y, x) is data[y * row_stride + x * col_stride]. */
typedef struct {
    const float *data;
    ptrdiff_t height, width;
    ptrdiff_t row_stride, col_stride;
} irst_map;

typedef struct {
    const irst_target *targets; /* count records, owned by the workspace: valid until its next use or its free */
    ptrdiff_t count;
} irst_result;

/* Buffers reused from call to call (runs, per-target slots), grown geometrically and released when a call needs
 * far less than they hold. One workspace serves one thread at a time. */
typedef struct irst_workspace irst_workspace;

irst_workspace *irst_workspace_new(void); /* NULL when out of memory */
void irst_workspace_free(irst_workspace *ws);
/* Foreground runs (maximal horizontal stretches of target pixels) the last successful irst_label() call on `ws`
 * found; -1 before the first. A stream's frames look alike, so this tells whether extra row bands paid last time. */
ptrdiff_t irst_last_run_count(const irst_workspace *ws);
/* The instruction set of the pass-1 scan, the fastest this CPU and this build allow (chosen at run time on x86):
 * "avx512", "avx2", "sse2", "neon" or "portable". */
const char *irst_scan_name(void);

/* The paper's target filter (eq. 4), applied to the finished targets: keep a target only if
 * size_min < size < size_max and ratio_min < aspect_ratio < ratio_max (<= with `inclusive`). An open side is
 * -INFINITY / +INFINITY. */
typedef struct {
    double size_min, size_max, ratio_min, ratio_max;
    int inclusive;
} irst_filter;

enum { IRST_OK = 0, IRST_NO_MEMORY = 1, IRST_TOO_LARGE = 2 };

/* Most threads (row bands) one call uses. */
#define IRST_MAX_THREADS 16

/* Largest height * width accepted: run indices and labels are int32. */
#define IRST_MAX_PIXELS ((ptrdiff_t)INT32_MAX)

/* Labels the pixels with logit > threshold (NaN never; +inf always; -inf never) into 8-connected targets.
 *
 * labels: NULL, or height * width int32 in row-major order, ALL ZERO on entry (background stays 0; the pixels of
 *         target k are set to k). Its layout does not follow the map's strides.
 * Statistics per target (see IRST_TARGET_FIELDS): size = pixel count; box x_min..x_max, y_min..y_max = inclusive
 * pixel indices; aspect_ratio = (x_max - x_min + 1) / (y_max - y_min + 1); x, y = mean pixel coordinates;
 * weighted_x, weighted_y = coordinates weighted by (double)logit - (double)threshold, except that a target holding
 * any +inf logit is weighted by its +inf pixels only (their plain mean: the limit of the weighting as those
 * weights grow without bound); peak_logit = the largest logit, peak_x, peak_y = its first raster position;
 * mean_logit = mean of the logits (+inf if any is +inf). Every double sum is accumulated pixel by pixel in raster
 * order, so a reference that sums in that order reproduces the values bit for bit.
 * threads: how many row bands to scan at once (clipped to 1..IRST_MAX_THREADS and to the height), each on a thread
 *         of its own (the calling thread takes the first); the result does not depend on it, bit for bit. Threads
 *         are created per call, so they pay off only on large maps (the Python wrapper decides "auto").
 * filter: NULL, or the targets to keep; the kept ones keep their labels (and their raster order), so labels can
 *         then have gaps; the label image still shows every target.
 * Returns IRST_OK, IRST_NO_MEMORY or IRST_TOO_LARGE (more than IRST_MAX_PIXELS); on failure result is empty and
 * the workspace stays usable. Memory: O(number of runs + number of targets), never per pixel; no global state. */
int irst_label(const irst_map *map, float threshold, int32_t *labels, const irst_filter *filter, int threads,
               irst_workspace *ws, irst_result *result);

#endif
