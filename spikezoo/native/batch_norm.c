/* BatchNorm's training forward on the CPU, as PyTorch's float32 kernel computes it.

   PyTorch's kernel (aten/src/ATen/native/cpu/batch_norm_kernel.cpp, contiguous input) sums each
   channel of x [batches, channels, size] in index order into a double: the values for the
   mean, then the float squares (x - mean)^2. One channel's sum is a chain of dependent
   additions, so its loop runs at the latency of a double add. Here LANES channels are summed
   side by side, each in its own accumulator and in the same order: the same bits in a fraction
   of the time. The per-channel finish (inverse standard deviation, running averages) follows
   aten/src/ATen/native/Normalization.cpp type for type, and the output is the kernel's affine
   map x * alpha + beta, written while the block of channels is still in cache. Blocks of
   channels are shared among OpenMP threads (PyTorch's own pool where PyTorch uses libgomp).
   Tests compare every output with the kernel's, bit for bit.

   Built without floating-point contraction: every product and sum is rounded as written, and
   a multiply-add is fused only where `contract` asks for it (fmaf), as the build of PyTorch's
   kernel does or does not; its caller finds out which on a probe. */

#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "batch_norm_map.h"

#define LANES 8

/* acc[k] = the sum over n and i, in that order, of x[n, c0 + k, i] (k < lanes), or of the
   float square (x[n, c0 + k, i] - centre[k])^2 where centre is not NULL. */
static void channel_sums(const float *x, int64_t batches, int64_t channels, int64_t size,
                         int64_t c0, int lanes, const float *centre, double *acc) {
    for (int k = 0; k < lanes; k++) acc[k] = 0.0;
    for (int64_t n = 0; n < batches; n++) {
        const float *rows = x + (n * channels + c0) * size;
        if (lanes == LANES && centre == NULL) {
            for (int64_t i = 0; i < size; i++)
                for (int k = 0; k < LANES; k++) acc[k] += (double)rows[k * size + i];
        } else if (lanes == LANES) {
            for (int64_t i = 0; i < size; i++)
                for (int k = 0; k < LANES; k++) {
                    const float d = rows[k * size + i] - centre[k];
                    acc[k] += (double)(d * d);
                }
        } else {
            for (int k = 0; k < lanes; k++)
                for (int64_t i = 0; i < size; i++) {
                    const float v = rows[k * size + i];
                    const float d = centre == NULL ? 0.0f : v - centre[k];
                    acc[k] += centre == NULL ? (double)v : (double)(d * d);
                }
        }
    }
}

/* out[i] = x[i] * alpha + beta for one row of `size` values, BatchNorm's map of channel c
   (batch_norm_map.h). */
static void normalise_row(const float *x, float *out, int64_t size, int64_t c, const float *weight,
                          const float *bias, int contract, float mean, float invstd) {
    float alpha, beta;
    batch_norm_coefficients(weight, bias, contract, mean, invstd, c, &alpha, &beta);
    if (contract)
        for (int64_t i = 0; i < size; i++) out[i] = input(AFFINE_FUSED, x[i], alpha, beta);
    else
        for (int64_t i = 0; i < size; i++) out[i] = input(AFFINE, x[i], alpha, beta);
}

/* x [batches, channels, size], contiguous, size > 1. Writes mean[c] and invstd[c]; updates
   running_mean[c] and running_var[c] with momentum unless they are NULL; writes the normalised
   output to out [batches, channels, size] unless it is NULL. At most `threads` threads. */
void batch_norm_training_f32(const float *x, int64_t batches, int64_t channels, int64_t size,
                             double momentum, double eps, const float *weight, const float *bias,
                             int contract, float *mean, float *invstd, float *running_mean,
                             float *running_var, float *out, int threads) {
    const int64_t count = batches * size, blocks = (channels + LANES - 1) / LANES;
    /* PyTorch casts momentum to float; the unbiased variance is a double (of a float quotient) */
    const float rate = (float)momentum, keep = 1.0f - rate;
#pragma omp parallel for schedule(static) num_threads(threads) if (blocks > 1)
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t c0 = block * LANES;
        const int lanes = channels - c0 < LANES ? (int)(channels - c0) : LANES;
        double acc[LANES];
        float centre[LANES];
        channel_sums(x, batches, channels, size, c0, lanes, NULL, acc);
        for (int k = 0; k < lanes; k++) centre[k] = (float)(acc[k] / (double)count);
        channel_sums(x, batches, channels, size, c0, lanes, centre, acc);
        for (int k = 0; k < lanes; k++) {
            const int64_t c = c0 + k;
            const float var_sum = (float)acc[k];
            const double var = (double)(var_sum / (float)count);
            mean[c] = centre[k];
            invstd[c] = (var != 0.0 || eps != 0.0) ? (float)(1.0 / sqrt(var + eps)) : 0.0f;
            if (running_mean != NULL)
                running_mean[c] = rate * centre[k] + keep * running_mean[c];
            if (running_var != NULL)
                running_var[c] = (float)((double)rate * (double)(var_sum / (float)(count - 1)) +
                                         (double)(keep * running_var[c]));
        }
        if (out != NULL)
            for (int64_t n = 0; n < batches; n++)
                for (int k = 0; k < lanes; k++) {
                    const int64_t row = (n * channels + c0 + k) * size;
                    normalise_row(x + row, out + row, size, c0 + k, weight, bias, contract,
                                  mean[c0 + k], invstd[c0 + k]);
                }
    }
}

/* out = the normalised x [batches, channels, size] (contiguous) for the statistics mean[c] and
   invstd[c], as batch_norm_training_f32 writes it. At most `threads` threads. */
void batch_norm_normalise_f32(const float *x, int64_t batches, int64_t channels, int64_t size,
                              const float *weight, const float *bias, int contract,
                              const float *mean, const float *invstd, float *out, int threads) {
    const int64_t rows = batches * channels;
#pragma omp parallel for schedule(static) num_threads(threads) if (rows > 1)
    for (int64_t row = 0; row < rows; row++) {
        const int64_t c = row % channels;
        normalise_row(x + row * size, out + row * size, size, c, weight, bias, contract, mean[c],
                      invstd[c]);
    }
}
