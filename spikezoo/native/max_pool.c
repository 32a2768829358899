/* Max-pooling of float32 [planes, height, width] planes on the CPU, as PyTorch's NCHW kernels
   compute it (aten/src/ATen/native/cpu/MaxPoolKernel.cpp, cpu_max_pool and
   cpu_max_pool_backward), saving where each maximum lies as an offset from its window's corner
   (row * width + column within the window) in 1, 2 or 4 bytes instead of an int64 index.

   Forward: a window's maximum is its first value, in row-major order, greater than every value
   before it, or its last NaN; a window of -inf values (or padding alone) gives -inf at its
   first value inside the plane. PyTorch walks one window at a time; here each kernel position
   (i, j) updates a whole output row at once, in the same (i, j) order for every window, so the
   loop over the row vectorises and every window sees the same comparisons as in PyTorch.

   Backward: each plane's gradient is zeroed, then every output's gradient is added to its
   maximum's position in output order, as PyTorch's kernel adds them (overlapping windows add
   in that order, so the sums have its bits).

   Without gradients the caller passes no offsets (NULL) and gets the maxima alone.

   Rows and planes are shared among OpenMP threads (PyTorch's own pool where PyTorch uses
   libgomp). Built without floating-point contraction and without fast-math (NaN compares as
   PyTorch's kernel compares it). */

#include <math.h>
#include <stdint.h>
#include <stdlib.h>

/* The narrowest output rows that take pool_row_with's loop for stride 2 (below). */
#define WIDE_ROW 32

typedef struct {
    int64_t planes, height, width, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
        out_height, out_width;
} window_t;

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }
static int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
/* floor(a / b) for b > 0 */
static int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

static void store_offsets(const int32_t *offset, void *offsets, int bytes, int64_t at,
                          int64_t count) {
    if (bytes == 1)
        for (int64_t k = 0; k < count; k++) ((int8_t *)offsets)[at + k] = (int8_t)offset[k];
    else if (bytes == 2)
        for (int64_t k = 0; k < count; k++) ((int16_t *)offsets)[at + k] = (int16_t)offset[k];
    else
        for (int64_t k = 0; k < count; k++) ((int32_t *)offsets)[at + k] = offset[k];
}

/* One output row: out[ow] and, where `track`, offset[ow] for every ow of row oh of one plane.
   Kernel column j meets the plane in outputs first[j] .. last[j]. Inlined with constant `s`
   and `track` (below), so the loop over the row loads its strided values as vectors. */
static inline __attribute__((always_inline)) void
pool_row_with(const float *restrict plane, const window_t *w, int64_t oh, const int64_t *first,
              const int64_t *last, float *restrict out, int32_t *restrict offset, int64_t s,
              int track) {
    const int64_t top = oh * w->stride_h - w->pad_h;
    const int64_t i0 = max64(0, -top), i1 = min64(w->kernel_h, w->height - top);
    for (int64_t ow = 0; ow < w->out_width; ow++) {
        out[ow] = -INFINITY;
        if (track) offset[ow] = (int32_t)(i0 * w->width + max64(0, w->pad_w - ow * s));
    }
    for (int64_t i = i0; i < i1; i++) {
        const float *restrict row = plane + (top + i) * w->width - w->pad_w;
        for (int64_t j = 0; j < w->kernel_w; j++) {
            const int32_t here = (int32_t)(i * w->width + j);
            for (int64_t ow = first[j]; ow <= last[j]; ow++) {
                const float v = row[ow * s + j];
                const int take = (v > out[ow]) | (v != v);
                out[ow] = take ? v : out[ow];
                if (track) offset[ow] = take ? here : offset[ow];
            }
        }
    }
}

/* pool_row_with, offsets where `offset` is not NULL, with the stride as a constant where that
   pays: stride 1 always, stride 2 on rows of at least WIDE_ROW outputs (on shorter rows the
   vector loop's remainder costs what its vectors save), any other stride at run time. */
static void pool_row(const float *plane, const window_t *w, int64_t oh, const int64_t *first,
                     const int64_t *last, float *out, int32_t *offset) {
#define ROW(s)                                                             \
    if (offset != NULL)                                                    \
        pool_row_with(plane, w, oh, first, last, out, offset, s, 1);       \
    else                                                                   \
        pool_row_with(plane, w, oh, first, last, out, NULL, s, 0)
    if (w->stride_w == 1) {
        ROW(1);
    } else if (w->stride_w == 2 && w->out_width >= WIDE_ROW) {
        ROW(2);
    } else {
        ROW(w->stride_w);
    }
#undef ROW
}

/* Returns 0, or 1 where a thread could not have the memory for its row of offsets (its rows
   are then left unwritten: the caller discards the output). */
int max_pool2d_offsets_f32(const float *x, int64_t planes, int64_t height, int64_t width,
                           int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                           int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t out_height,
                           int64_t out_width, float *out, void *offsets, int offset_bytes,
                           int threads) {
    const window_t w = {planes, height, width, kernel_h, kernel_w, stride_h, stride_w,
                        pad_h, pad_w, out_height, out_width};
    const int64_t rows = planes * out_height;
    int64_t first[kernel_w], last[kernel_w];
    for (int64_t j = 0; j < kernel_w; j++) {
        const int64_t shift = j - pad_w;
        first[j] = max64(0, floor_div(-shift + stride_w - 1, stride_w));
        last[j] = min64(out_width - 1, floor_div(width - 1 - shift, stride_w));
    }
    int failed = 0;
#pragma omp parallel num_threads(threads) if (rows > 1)
    {
        int32_t *offset = offsets == NULL ? NULL : malloc(sizeof(int32_t) * (size_t)out_width);
        const int without_row = offsets != NULL && offset == NULL;
        if (without_row) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(static)
        for (int64_t r = 0; r < rows; r++) {
            if (without_row) continue;
            const int64_t p = r / out_height, oh = r % out_height;
            pool_row(x + p * height * width, &w, oh, first, last, out + r * out_width, offset);
            if (offsets != NULL) store_offsets(offset, offsets, offset_bytes, r * out_width, out_width);
        }
        free(offset);
    }
    return failed;
}

void max_pool2d_offsets_backward_f32(const float *grad_out, const void *offsets,
                                     int offset_bytes, int64_t planes, int64_t height,
                                     int64_t width, int64_t stride_h, int64_t stride_w,
                                     int64_t pad_h, int64_t pad_w, int64_t out_height,
                                     int64_t out_width, float *grad_in, int threads) {
    const int64_t size = height * width, outputs = out_height * out_width;
#pragma omp parallel for schedule(static) num_threads(threads) if (planes > 1)
    for (int64_t p = 0; p < planes; p++) {
        float *plane = grad_in + p * size;
        for (int64_t k = 0; k < size; k++) plane[k] = 0.0f;
        for (int64_t oh = 0; oh < out_height; oh++) {
            const int64_t corner_row = (oh * stride_h - pad_h) * width;
            for (int64_t ow = 0; ow < out_width; ow++) {
                const int64_t at = p * outputs + oh * out_width + ow;
                const int64_t offset = offset_bytes == 1   ? ((const int8_t *)offsets)[at]
                                       : offset_bytes == 2 ? ((const int16_t *)offsets)[at]
                                                           : ((const int32_t *)offsets)[at];
                plane[corner_row + ow * stride_w - pad_w + offset] += grad_out[at];
            }
        }
    }
}
