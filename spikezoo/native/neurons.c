/* The multi-step neuron loops (IF, LIF, PLIF) on the CPU, float32, for backend "native".

   The arithmetic is that of the eager loops in spikezoo/neurons/dynamics.py, operation for
   operation and rounded as written (the library is built without contraction), so charged
   membranes, spikes and final membranes are those loops' bit for bit. The one operation
   computed otherwise is the sigmoid surrogate's exponential: a polynomial (Cephes' expf,
   about one ulp) that vectorises, where PyTorch calls its own vectorised exp.

   Each thread takes a span of neurons at a time (spans are shared among OpenMP threads,
   PyTorch's own pool where PyTorch uses libgomp) and runs its steps CHUNK at a time, a TILE of
   neurons at a time, so every [T, N] tensor is read or written once per pass while the span's
   membranes stay in cache. A tile touches up to three rows per step (x, dL/dspikes, dL/dx),
   more streams than the hardware prefetchers follow, so each loop asks for its rows of the
   tile PREFETCH_TILES ahead itself. The backward pass walks the steps in
   reverse; where it recharges the membranes from the input x, it writes them into the span's
   rows of dL/dx first and overwrites each row with its gradient on the way back, so no
   [T, N] membranes ever reach memory.

   The input may be read through BatchNorm's per-channel affine map (normalisation_t of
   batch_norm_map.h), so that a BatchNorm and the neuron after it take one pass: the loops then
   charge with x * alpha + beta, computed as PyTorch's CPU kernel computes BatchNorm's
   output. */

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "batch_norm_map.h"

/* 512-bit vectors where the CPU has them (gcc prefers 256 bits on most AVX-512 CPUs; it takes
   this pragma from version 8): the backward pass's exponential keeps up with memory only at
   the full width. Each element's arithmetic is the same at any width; only a PLIF's dL/dk sum
   adds in another order. */
#if defined(__AVX512F__) && defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 8
#pragma GCC target("prefer-vector-width=512")
#endif

/* Neurons per vector loop: the per-neuron arrays of a loop stay in the L1 cache. */
#define TILE 128
/* Steps per pass over a span of neurons: up to T = 16 a span is one tile and runs all its
   steps at once; longer sequences run 16 steps a pass over wider spans. */
#define CHUNK 16
/* The most neurons a thread takes at a time: their membranes (or dL/dv) stay in L2 between the
   chunks of steps, and their T rows of dL/dx (the recharged membranes) too. */
#define SPAN 8192
/* How far ahead a loop fetches its rows, in tiles (on an Intel Xeon with AVX-512 one, two and
   four tiles ahead measured the same within the noise). */
#define PREFETCH_TILES 2

/* The cache lines of the tile PREFETCH_TILES ahead of `row` in the same row of a [T, N]
   tensor, for reading (rw 0) or writing (rw 1). A prefetch never faults, so the rows past
   the last tile cost nothing but the instruction. */
#define PREFETCH_ROW(row, rw)                                                \
    for (int64_t line = 0; line < TILE; line += 64 / (int64_t)sizeof(float)) \
    __builtin_prefetch((row) + PREFETCH_TILES * TILE + line, rw, 3)

/* The static configuration: NeuronConfig's fields and the decay k. */
typedef struct {
    int32_t leaky;        /* LIF or PLIF, else IF */
    int32_t decay_input;  /* h = v + (x - (v - rest)) * k, else v - (v - rest) * k + x */
    int32_t soft_reset;   /* v_reset is None: subtract the threshold */
    int32_t detach_reset; /* no gradient through the reset */
    int32_t surrogate;    /* 0: sigmoid, 1: atan */
    float v_threshold;
    float v_reset;      /* hard reset only */
    float charge_reset; /* the rest potential the leak pulls towards (0 under soft reset) */
    float alpha;        /* the surrogate's sharpness */
    float atan_scale;   /* float(pi / 2 * alpha), as PyTorch rounds the Python product */
    float atan_height;  /* float(alpha / 2) */
    float k;
} neuron_t;

typedef enum { INTEGRATE, LEAK_INPUT, LEAK_MEMBRANE } charge_kind;

static inline __attribute__((always_inline)) float charge(charge_kind kind, float x, float v,
                                                          float rest, float k) {
    if (kind == INTEGRATE) return v + x;
    /* v - 0.0f is v bit for bit, so the rest is subtracted even where the eager loop skips it */
    if (kind == LEAK_INPUT) return v + (x - (v - rest)) * k;
    return v - (v - rest) * k + x;
}

static inline __attribute__((always_inline)) float after_spike(int soft, float h, float threshold,
                                                               float v_reset) {
    const int fired = h >= threshold;
    if (soft) return h - (fired ? threshold : 0.0f);
    return fired ? v_reset : h;
}

static charge_kind kind_of(const neuron_t *n) {
    return !n->leaky ? INTEGRATE : n->decay_input ? LEAK_INPUT : LEAK_MEMBRANE;
}

static int threads_for(int64_t spans, int threads) { return spans > 1 ? threads : 1; }

/* Neurons per span for `steps` steps: a tile where one chunk holds every step, else as many as
   keep the span's T rows within 512 KiB (half an L2 cache). */
static int64_t span_for(int64_t steps) {
    const int64_t span = steps <= CHUNK ? TILE : 131072 / steps / TILE * TILE;
    return span < TILE ? TILE : span > SPAN ? SPAN : span;
}

static int64_t smaller(int64_t a, int64_t b) { return a < b ? a : b; }

/* Steps [0, steps) of the neurons [i0, i0 + count), from the membranes v (updated in place).
   Step t of x starts at x + t * x_step (x_step 0: the same input at every step), read
   through alpha and beta ([count], the tile's; unused for RAW); spikes and charged (either
   may be NULL) are [steps, neurons]. */
static inline __attribute__((always_inline)) void
charge_tile(charge_kind kind, int soft, input_kind reading, const neuron_t *n,
            const float *restrict x, const float *restrict alpha, const float *restrict beta,
            int64_t x_step, int64_t steps, int64_t neurons, int64_t i0, int64_t count,
            float *restrict v, float *restrict spikes, float *restrict charged) {
    const float threshold = n->v_threshold, v_reset = n->v_reset, rest = n->charge_reset;
    const float k = n->k;
    for (int64_t t = 0; t < steps; t++) {
        const int64_t row = t * neurons + i0;
        const float *restrict x_row = x + t * x_step + i0;
        PREFETCH_ROW(x_row, 0);
        if (spikes != NULL) PREFETCH_ROW(spikes + row, 1);
        if (charged != NULL) PREFETCH_ROW(charged + row, 1);
        for (int64_t i = 0; i < count; i++) {
            const float in = input(reading, x_row[i], alpha[i], beta[i]);
            const float h = charge(kind, in, v[i], rest, k);
            if (spikes != NULL) spikes[row + i] = h != h ? h : (float)(h >= threshold);
            if (charged != NULL) charged[row + i] = h;
            v[i] = after_spike(soft, h, threshold, v_reset);
        }
    }
}

static void charge_tile_of(const neuron_t *n, input_kind reading, const float *x,
                           const float *alpha, const float *beta, int64_t x_step, int64_t steps,
                           int64_t neurons, int64_t i0, int64_t count, float *v, float *spikes,
                           float *charged) {
    /* one specialised loop per (input, charge, reset) */
#define CHARGE(reading, kind, soft)                                                           \
    charge_tile(kind, soft, reading, n, x, alpha, beta, x_step, steps, neurons, i0, count, v, \
                spikes, charged)
#define RESET(reading, kind)      \
    if (n->soft_reset)            \
        CHARGE(reading, kind, 1); \
    else                          \
        CHARGE(reading, kind, 0)
#define KIND(reading)                      \
    if (kind == INTEGRATE) {               \
        RESET(reading, INTEGRATE);         \
    } else if (kind == LEAK_INPUT) {       \
        RESET(reading, LEAK_INPUT);        \
    } else {                               \
        RESET(reading, LEAK_MEMBRANE);     \
    }
    const charge_kind kind = kind_of(n);
    if (reading == AFFINE_FUSED) {
        KIND(AFFINE_FUSED)
    } else if (reading == AFFINE) {
        KIND(AFFINE)
    } else {
        KIND(RAW)
    }
#undef KIND
#undef RESET
#undef CHARGE
}

static void load_membranes(float *v, const float *source, int per_neuron, int64_t i0,
                           int64_t count) {
    for (int64_t i = 0; i < count; i++) v[i] = per_neuron ? source[i0 + i] : source[0];
}

/* A normalisation's alpha and beta per channel (coefficients[c] and coefficients[channels +
   c]). */
static void all_coefficients(const normalisation_t *norm, float *coefficients) {
    for (int64_t c = 0; c < norm->channels; c++)
        channel_coefficients(norm, c, coefficients + c, coefficients + norm->channels + c);
}

/* alpha and beta ([count]) of the neurons [i0, i0 + count) from their channels', a run of
   neurons of one channel at a time. */
static void tile_coefficients(const normalisation_t *norm, const float *coefficients, int64_t i0,
                              int64_t count, float *alpha, float *beta) {
    int64_t c = i0 / norm->inner % norm->channels, position = i0 % norm->inner;
    for (int64_t i = 0; i < count; position = 0, c = c + 1 == norm->channels ? 0 : c + 1) {
        const int64_t run = smaller(norm->inner - position, count - i);
        const float a = coefficients[c], b = coefficients[norm->channels + c];
        for (int64_t j = i; j < i + run; j++) {
            alpha[j] = a;
            beta[j] = b;
        }
        i += run;
    }
}

/* The steps of the neurons [i0, i0 + count) from their membranes v (updated), chunk by chunk,
   tile by tile, as charge_tile takes them; x is read through norm (with its coefficients)
   unless norm is NULL. */
static void charge_span(const neuron_t *n, const normalisation_t *norm, const float *coefficients,
                        const float *x, int64_t x_step, int64_t steps, int64_t neurons, int64_t i0,
                        int64_t count, float *v, float *spikes, float *charged) {
    const input_kind reading = norm == NULL ? RAW : norm->contract ? AFFINE_FUSED : AFFINE;
    float alpha[TILE], beta[TILE];
    for (int64_t t0 = 0; t0 < steps; t0 += CHUNK) {
        const int64_t offset = t0 * neurons;
        for (int64_t j = 0; j < count; j += TILE) {
            const int64_t tile = smaller(TILE, count - j);
            if (norm != NULL) tile_coefficients(norm, coefficients, i0 + j, tile, alpha, beta);
            charge_tile_of(n, reading, x + t0 * x_step, alpha, beta, x_step,
                           smaller(CHUNK, steps - t0), neurons, i0 + j, tile, v + j,
                           spikes == NULL ? NULL : spikes + offset,
                           charged == NULL ? NULL : charged + offset);
        }
    }
}

/* norm's coefficients (2 * channels floats, to be freed), or NULL where norm is NULL or no
   memory could be had (*failed set). */
static float *coefficients_of(const normalisation_t *norm, int *failed) {
    *failed = 0;
    if (norm == NULL) return NULL;
    float *coefficients = malloc(2 * norm->channels * sizeof(float));
    if (coefficients == NULL)
        *failed = 1;
    else
        all_coefficients(norm, coefficients);
    return coefficients;
}

/* forward_sequence over x [steps, neurons] (step t at x + t * x_step), read through norm
   unless it is NULL: spikes [steps, neurons], the charged membranes (unless charged is NULL)
   and the final membranes v_final [neurons] (unless NULL), from v_init ([neurons] if
   v_init_per_neuron, else one value). Returns 0, or 1 where memory for norm's coefficients
   could not be had (nothing written). At most `threads` threads. */
int neurons_forward_f32(const neuron_t *n, const normalisation_t *norm, const float *x,
                        int64_t x_step, int64_t steps, int64_t neurons, const float *v_init,
                        int v_init_per_neuron, float *spikes, float *charged, float *v_final,
                        int threads) {
    const int64_t span = span_for(steps), spans = (neurons + span - 1) / span;
    int failed;
    float *coefficients = coefficients_of(norm, &failed);
    if (failed) return 1;
#pragma omp parallel for schedule(static) num_threads(threads_for(spans, threads))
    for (int64_t index = 0; index < spans; index++) {
        const int64_t i0 = index * span, count = smaller(span, neurons - i0);
        float v[SPAN];
        load_membranes(v, v_init, v_init_per_neuron, i0, count);
        charge_span(n, norm, coefficients, x, x_step, steps, neurons, i0, count, v, spikes,
                    charged);
        if (v_final != NULL)
            for (int64_t i = 0; i < count; i++) v_final[i0 + i] = v[i];
    }
    free(coefficients);
    return 0;
}

/* A multiply-add inside the exponential alone: fused where the CPU has the instruction (half
   the work; the exponential's rounding differs from PyTorch's anyway), else rounded twice. */
#ifdef __FMA__
#define MULTIPLY_ADD(a, b, c) fmaf(a, b, c)
#else
#define MULTIPLY_ADD(a, b, c) ((a) * (b) + (c))
#endif

/* e^x within about one ulp for x in [-86, 89], infinite where it passes FLT_MAX, NaN for NaN;
   below -86 it is e^-86 (about 4e-38), which changes nothing where the sigmoid adds it to 1. */
static inline float exp_f32(float x) {
    /* 1.5 * 2^23 + 126: a sum with it is rounded to a whole number, n + 126, which its low
       mantissa bits hold */
    const float shifter = 12583038.0f;
    x = x < -86.0f ? -86.0f : x > 89.0f ? 89.0f : x;
    const float shifted = MULTIPLY_ADD(x, 1.44269504088896341f, shifter);
    const float n = shifted - shifter; /* round(x / ln 2), in [-124, 128] */
    /* ln 2 in two parts; n * 0.693359375f is exact */
    const float r = MULTIPLY_ADD(n, 2.12194440e-4f, MULTIPLY_ADD(n, -0.693359375f, x));
    /* 2 e^r: Cephes' expf polynomial times two (exactly) */
    float p = 3.9751383000e-4f;
    p = MULTIPLY_ADD(p, r, 2.7963999014e-3f);
    p = MULTIPLY_ADD(p, r, 1.6666903815e-2f);
    p = MULTIPLY_ADD(p, r, 8.3331591788e-2f);
    p = MULTIPLY_ADD(p, r, 3.3333330918e-1f);
    p = MULTIPLY_ADD(p, r, 1.0000000240e+0f);
    p = MULTIPLY_ADD(p, r * r, MULTIPLY_ADD(r, 2.0f, 2.0f));
    /* times 2^(n - 1), a normal float: its biased exponent n + 126 shifted into place */
    union {
        float value;
        int32_t bits;
    } scale = {.value = shifted};
    scale.bits <<= 23;
    return p * scale.value;
}

/* The surrogate dS/du at u = h - threshold, as spikezoo/neurons/surrogate.py computes it. */
static inline __attribute__((always_inline)) float surrogate(int atan, const neuron_t *n,
                                                             float u) {
    if (atan) {
        const float y = n->atan_scale * u;
        return n->atan_height / (1.0f + y * y);
    }
    const float sig = 1.0f / (1.0f + exp_f32(-(u * n->alpha)));
    return (1.0f - sig) * sig * n->alpha;
}

/* One step back for `count` neurons: grad_h = g * dS/du + grad_v * dv/dh, written to
   out[i] = grad_h * scale, and grad_v[i] = dL/dv before the step. h and out may be the same
   memory (the recharged membranes in dL/dx's rows): each is read before it is written. */
static inline __attribute__((always_inline)) void
step_back(int leaky, int soft, int detach, int atan, const neuron_t *n, const float *h,
          const float *restrict g, float *restrict grad_v, float *out, float scale,
          int64_t count) {
    const float threshold = n->v_threshold, v_reset = n->v_reset, keep = 1.0f - n->k;
#pragma GCC ivdep
    for (int64_t i = 0; i < count; i++) {
        const float u = h[i] - threshold;
        const float ds = surrogate(atan, n, u);
        float dv_dh;
        if (soft)
            dv_dh = detach ? 1.0f : 1.0f - threshold * ds;
        else {
            dv_dh = u < 0.0f ? 1.0f : 0.0f;
            if (!detach) dv_dh = dv_dh + (v_reset - h[i]) * ds;
        }
        const float grad_h = g[i] * ds + grad_v[i] * dv_dh;
        out[i] = grad_h * scale;
        grad_v[i] = leaky ? grad_h * keep : grad_h;
    }
}

static void step_back_of(const neuron_t *n, const float *h, const float *g, float *grad_v,
                         float *out, float scale, int64_t count) {
    /* one specialised loop per (leak, reset, detach_reset, surrogate) */
#define SURROGATE(leaky, soft, detach)                                      \
    if (n->surrogate)                                                      \
        step_back(leaky, soft, detach, 1, n, h, g, grad_v, out, scale, count); \
    else                                                                   \
        step_back(leaky, soft, detach, 0, n, h, g, grad_v, out, scale, count)
#define DETACH(leaky, soft)        \
    if (n->detach_reset) {         \
        SURROGATE(leaky, soft, 1); \
    } else {                       \
        SURROGATE(leaky, soft, 0); \
    }
#define RESET(leaky)     \
    if (n->soft_reset) { \
        DETACH(leaky, 1) \
    } else {             \
        DETACH(leaky, 0) \
    }
    if (n->leaky) {
        RESET(1)
    } else {
        RESET(0)
    }
#undef RESET
#undef DETACH
#undef SURROGATE
}

/* The sum over a tile of dL/dh * dh/dk for one step, as backward_steps adds it (dh/dk for
   decay_input not yet divided by k). v_prev: the membranes before the step (h_prev reset, or
   v_init at the first step). */
static double decay_gradient(const neuron_t *n, const float *restrict h,
                             const float *restrict h_prev, const float *restrict v_init,
                             int v_init_per_neuron, int64_t i0, const float *restrict grad_h,
                             int64_t count) {
    float v_prev[TILE];
    if (h_prev == NULL)
        load_membranes(v_prev, v_init, v_init_per_neuron, i0, count);
    else if (n->soft_reset)
        for (int64_t i = 0; i < count; i++)
            v_prev[i] = after_spike(1, h_prev[i], n->v_threshold, n->v_reset);
    else
        for (int64_t i = 0; i < count; i++)
            v_prev[i] = after_spike(0, h_prev[i], n->v_threshold, n->v_reset);
    const float rest = n->charge_reset;
    const int decay_input = n->decay_input;
    double sum = 0.0;
#pragma omp simd reduction(+ : sum)
    for (int64_t i = 0; i < count; i++)
        sum += (double)(grad_h[i] * (decay_input ? h[i] - v_prev[i] : rest - v_prev[i]));
    return sum;
}

/* Back-propagation through time of neurons_forward_f32 over [steps, neurons]: dL/dx into
   grad_x, dL/dv_init into grad_v_init (unless NULL) and the decay's summed term into
   *grad_k (unless NULL; the caller divides it by k under decay_input). The charged membranes
   are read from `charged`, or recharged from x (step t at x + t * x_step, read through norm
   unless it is NULL: grad_x is then dL/d of what the neurons read; norm is NULL where charged
   is not) where charged is NULL. grad_v is dL/dv_final
   ([neurons] if grad_v_per_neuron, else one value). Returns 0, or 1 where memory for the
   per-span sums of dL/dk or norm's coefficients could not be had. At most `threads`
   threads. */
int neurons_backward_f32(const neuron_t *n, const normalisation_t *norm, const float *grad_spikes,
                         const float *grad_v, int grad_v_per_neuron, const float *charged,
                         const float *x, int64_t x_step, const float *v_init,
                         int v_init_per_neuron, int64_t steps, int64_t neurons, float *grad_x,
                         float *grad_v_init, double *grad_k, int threads) {
    const int64_t span = span_for(steps), spans = (neurons + span - 1) / span;
    double *span_sums = NULL;
    if (grad_k != NULL && n->leaky && (span_sums = calloc(spans, sizeof(double))) == NULL)
        return 1;
    int failed;
    float *coefficients = coefficients_of(norm, &failed);
    if (failed) {
        free(span_sums);
        return 1;
    }
    /* dL/dx = dL/dh * k under decay_input, else dL/dh (times 1.0f: the same bits) */
    const float input_scale = n->leaky && n->decay_input ? n->k : 1.0f;
    /* the membranes are recharged into dL/dx's rows of the span, which it reads back */
    const float *membranes = charged != NULL ? charged : grad_x;
#pragma omp parallel for schedule(static) num_threads(threads_for(spans, threads))
    for (int64_t index = 0; index < spans; index++) {
        const int64_t i0 = index * span, count = smaller(span, neurons - i0);
        float gv[SPAN], grad_h[TILE];
        if (charged == NULL) { /* gv holds the membranes while they are recharged */
            load_membranes(gv, v_init, v_init_per_neuron, i0, count);
            charge_span(n, norm, coefficients, x, x_step, steps, neurons, i0, count, gv, NULL,
                        grad_x);
        }
        load_membranes(gv, grad_v, grad_v_per_neuron, i0, count);
        double sum = 0.0;
        for (int64_t t1 = steps; t1 > 0; t1 -= CHUNK) {
            const int64_t t0 = t1 > CHUNK ? t1 - CHUNK : 0;
            for (int64_t j = 0; j < count; j += TILE) {
                const int64_t tile = smaller(TILE, count - j);
                for (int64_t t = t1 - 1; t >= t0; t--) {
                    const int64_t row = t * neurons + i0 + j;
                    const float *h = membranes + row;
                    float *gx = grad_x + row;
                    PREFETCH_ROW(grad_spikes + row, 0);
                    PREFETCH_ROW(gx, 1);
                    if (charged != NULL) PREFETCH_ROW(h, 0);
                    if (span_sums == NULL) {
                        step_back_of(n, h, grad_spikes + row, gv + j, gx, input_scale, tile);
                        continue;
                    }
                    /* dL/dk reads h (perhaps in gx) and dL/dh before gx is written */
                    step_back_of(n, h, grad_spikes + row, gv + j, grad_h, 1.0f, tile);
                    sum += decay_gradient(n, h, t > 0 ? h - neurons : NULL, v_init,
                                          v_init_per_neuron, i0 + j, grad_h, tile);
                    for (int64_t i = 0; i < tile; i++) gx[i] = grad_h[i] * input_scale;
                }
            }
        }
        if (span_sums != NULL) span_sums[index] = sum;
        if (grad_v_init != NULL)
            for (int64_t i = 0; i < count; i++) grad_v_init[i0 + i] = gv[i];
    }
    if (grad_k != NULL) {
        double total = 0.0;
        for (int64_t index = 0; span_sums != NULL && index < spans; index++)
            total += span_sums[index];
        *grad_k = total;
    }
    free(span_sums);
    free(coefficients);
    return 0;
}
