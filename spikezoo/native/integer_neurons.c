/* The integer neuron (spikezoo/neurons/integer.py) on the CPU, float32, in one pass.

   PyTorch computes it as three or four kernels, each a pass over the tensor: clamp(x, 0, levels),
   round_ (or add_(0.5) and floor_), div_(norm), and in training the window mask. Here one loop
   reads x once and writes the spikes, and the mask and the uint8 counts where asked, with the
   same operations rounded as written (the library is built without contraction):

   - clamp keeps x where 0 <= x <= levels, -0.0 and NaN included, as PyTorch's clamp does;
   - "half_even" rounds to nearest, ties to even (PyTorch's round); "half_up" is floor(c + 0.5),
     the sum rounded to float first, its floor taken as rint(y) - (rint(y) > y), which is floor
     for every y >= 0 and NaN and, unlike floorf, vectorises here;
   - spikes = rounded / norm, a float32 division;
   - the mask is c == x ("closed": 0 <= x <= levels) or 0 < x < levels ("open"), false for NaN;
   - counts are the rounded values converted to uint8 as PyTorch's .to(torch.uint8) converts
     them (through int32; only asked for where levels <= 255).

   The backward pass is grad / norm * mask, a float32 division and a product with 1.0 or 0.0
   (so -0.0 and NaN come out as PyTorch's).

   In evaluation the input may be read through a BatchNorm's per-channel map (batch_norm_map.h):
   the loop then fires on x * alpha + beta, as BatchNorm's CPU kernel computes its output,
   which is never written.

   Blocks of BLOCK elements are shared among OpenMP threads (PyTorch's own pool where PyTorch
   uses libgomp); the caller passes 1 thread for a small tensor. */

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "batch_norm_map.h"

#define BLOCK 16384

typedef void (*fire_loop)(const float *restrict, int64_t, int64_t, float, float,
                          float *restrict, uint8_t *restrict, uint8_t *restrict);
typedef void (*normalised_loop)(const float *restrict, int64_t, int64_t, float, float, float,
                                float, float *restrict);

/* Elements [begin, end), read as `reading` says. The flags are constants in each instance
   below, so that every instance compiles to one branch-free vector loop. */
static inline __attribute__((always_inline)) void
fire(const float *restrict x, int64_t begin, int64_t end, float levels, float norm,
     input_kind reading, float alpha, float beta, int half_up, int open, int mask, int count,
     int scale, float *restrict spikes, uint8_t *restrict inside, uint8_t *restrict counts) {
    for (int64_t i = begin; i < end; i++) {
        const float v = input(reading, x[i], alpha, beta);
        const float low = v < 0.0f ? 0.0f : v;
        const float clamped = low > levels ? levels : low;
        float rounded = rintf(clamped);
        if (half_up) {
            const float y = clamped + 0.5f, nearest = rintf(y);
            rounded = nearest - (nearest > y ? 1.0f : 0.0f);
        }
        spikes[i] = scale ? rounded * (1.0f / norm) : rounded / norm;
        if (mask) inside[i] = open ? (v > 0.0f) & (v < levels) : clamped == v;
        if (count) counts[i] = (uint8_t)(int32_t)rounded;
    }
}

#define FIRE_LOOP(k)                                                                             \
    static void fire_##k(const float *restrict x, int64_t begin, int64_t end, float levels,      \
                         float norm, float *restrict spikes, uint8_t *restrict inside,           \
                         uint8_t *restrict counts) {                                             \
        fire(x, begin, end, levels, norm, RAW, 1.0f, 0.0f, (k) & 1, ((k) >> 1) & 1,              \
             ((k) >> 2) & 1, ((k) >> 3) & 1, (k) >> 4, spikes, inside, counts);                  \
    }
FIRE_LOOP(0) FIRE_LOOP(1) FIRE_LOOP(2) FIRE_LOOP(3) FIRE_LOOP(4) FIRE_LOOP(5) FIRE_LOOP(6)
FIRE_LOOP(7) FIRE_LOOP(8) FIRE_LOOP(9) FIRE_LOOP(10) FIRE_LOOP(11) FIRE_LOOP(12) FIRE_LOOP(13)
FIRE_LOOP(14) FIRE_LOOP(15) FIRE_LOOP(16) FIRE_LOOP(17) FIRE_LOOP(18) FIRE_LOOP(19) FIRE_LOOP(20)
FIRE_LOOP(21) FIRE_LOOP(22) FIRE_LOOP(23) FIRE_LOOP(24) FIRE_LOOP(25) FIRE_LOOP(26) FIRE_LOOP(27)
FIRE_LOOP(28) FIRE_LOOP(29) FIRE_LOOP(30) FIRE_LOOP(31)
#undef FIRE_LOOP

static const fire_loop FIRE_LOOPS[32] = {
    fire_0,  fire_1,  fire_2,  fire_3,  fire_4,  fire_5,  fire_6,  fire_7,
    fire_8,  fire_9,  fire_10, fire_11, fire_12, fire_13, fire_14, fire_15,
    fire_16, fire_17, fire_18, fire_19, fire_20, fire_21, fire_22, fire_23,
    fire_24, fire_25, fire_26, fire_27, fire_28, fire_29, fire_30, fire_31};

/* Without mask and counts, x read through alpha and beta: one instance per (rounding, reading,
   scale), k = half_up | fused << 1 | scale << 2. */
#define NORMALISED_LOOP(k)                                                                     \
    static void normalised_##k(const float *restrict x, int64_t begin, int64_t end,             \
                               float levels, float norm, float alpha, float beta,               \
                               float *restrict spikes) {                                        \
        fire(x, begin, end, levels, norm, ((k) >> 1) & 1 ? AFFINE_FUSED : AFFINE, alpha, beta,  \
             (k) & 1, 0, 0, 0, (k) >> 2, spikes, NULL, NULL);                                   \
    }
NORMALISED_LOOP(0) NORMALISED_LOOP(1) NORMALISED_LOOP(2) NORMALISED_LOOP(3) NORMALISED_LOOP(4)
NORMALISED_LOOP(5) NORMALISED_LOOP(6) NORMALISED_LOOP(7)
#undef NORMALISED_LOOP

static const normalised_loop NORMALISED_LOOPS[8] = {normalised_0, normalised_1, normalised_2,
                                                    normalised_3, normalised_4, normalised_5,
                                                    normalised_6, normalised_7};

/* Whether x / norm == x * (1 / norm) for every float x: norm a power of two whose reciprocal is
   a normal float (then the product rounds nothing away, as the quotient does not). */
static int power_of_two(float norm) {
    int exponent;
    return frexpf(norm, &exponent) == 0.5f && exponent > -125 && exponent < 127;
}

/* x [n] (contiguous) -> spikes [n]; inside [n] (the gradient window) and counts [n] unless they
   are NULL. */
void integer_fire_f32(const float *x, int64_t n, float levels, float norm, int half_up, int open,
                      float *spikes, uint8_t *inside, uint8_t *counts, int threads) {
    const fire_loop loop =
        FIRE_LOOPS[(half_up ? 1 : 0) | (open ? 2 : 0) | (inside ? 4 : 0) | (counts ? 8 : 0) |
                   (power_of_two(norm) ? 16 : 0)];
    const int64_t blocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && blocks > 1)
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t begin = block * BLOCK, end = begin + BLOCK < n ? begin + BLOCK : n;
        loop(x, begin, end, levels, norm, spikes, inside, counts);
    }
}

/* x [n] (contiguous, [T, B, channels, inner]) read through `batch_norm`'s map -> spikes [n];
   no mask, no counts. */
void integer_fire_normalised_f32(const float *x, int64_t n, const normalisation_t *batch_norm,
                                 float levels, float norm, int half_up, float *spikes,
                                 int threads) {
    const normalised_loop loop =
        NORMALISED_LOOPS[(half_up ? 1 : 0) | (batch_norm->contract ? 2 : 0) |
                         (power_of_two(norm) ? 4 : 0)];
    const int64_t blocks = (n + BLOCK - 1) / BLOCK, inner = batch_norm->inner;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && blocks > 1)
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t end = block * BLOCK + BLOCK < n ? block * BLOCK + BLOCK : n;
        /* one run of a channel's values at a time, its alpha and beta constants of the loop */
        for (int64_t begin = block * BLOCK; begin < end;) {
            const int64_t run = begin - begin % inner + inner, stop = run < end ? run : end;
            float alpha, beta;
            channel_coefficients(batch_norm, begin / inner % batch_norm->channels, &alpha, &beta);
            loop(x, begin, stop, levels, norm, alpha, beta, spikes);
            begin = stop;
        }
    }
}

static void backward_range(const float *restrict grad, const uint8_t *restrict inside,
                           int64_t begin, int64_t end, float norm, float *restrict grad_x) {
    for (int64_t i = begin; i < end; i++) grad_x[i] = grad[i] / norm * (float)inside[i];
}

/* grad [n], inside [n] (contiguous) -> grad_x [n] = grad / norm * inside. */
void integer_backward_f32(const float *grad, const uint8_t *inside, int64_t n, float norm,
                          float *grad_x, int threads) {
    const int64_t blocks = (n + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads) if (threads > 1 && blocks > 1)
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t begin = block * BLOCK, end = begin + BLOCK < n ? begin + BLOCK : n;
        backward_range(grad, inside, begin, end, norm, grad_x);
    }
}
