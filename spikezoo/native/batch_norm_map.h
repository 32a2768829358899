/* BatchNorm's per-channel affine map, for every kernel here that applies it: batch_norm.c writes
   BatchNorm's output with it, neurons.c and integer_neurons.c read their input through it, so
   that the output is never written.

   PyTorch's CPU kernel (aten/src/ATen/native/cpu/batch_norm_kernel.cpp,
   batch_norm_cpu_collect_linear_and_constant_terms and its transform) computes BatchNorm's
   output as x * alpha + beta, for alpha = invstd * weight and beta = bias - mean * alpha
   (weight 1 and bias 0 where NULL), each sum of a product a multiply-add where `contract`, as
   the build of PyTorch's kernel has it (its caller finds out which on a probe). The sources
   that include this are built without floating-point contraction: everything else is rounded
   as written. */

#ifndef SPIKEZOO_BATCH_NORM_MAP_H
#define SPIKEZOO_BATCH_NORM_MAP_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>

/* A BatchNorm between an input x [T, B, channels, inner] and what reads it: element i belongs
   to channel c = i / inner % channels. */
typedef struct {
    const float *weight, *bias, *mean, *invstd;
    int64_t channels, inner;
    int32_t contract;
} normalisation_t;

/* alpha and beta of channel c, for its statistics mean and invstd. */
static inline void batch_norm_coefficients(const float *weight, const float *bias, int contract,
                                           float mean, float invstd, int64_t c, float *alpha,
                                           float *beta) {
    const float a = weight == NULL ? invstd : invstd * weight[c];
    const float shift = bias == NULL ? 0.0f : bias[c];
    *alpha = a;
    *beta = contract ? fmaf(-mean, a, shift) : shift - mean * a;
}

/* How a kernel reads its input x: as it is, or through BatchNorm's alpha and beta, rounded
   twice or fused. */
typedef enum { RAW, AFFINE, AFFINE_FUSED } input_kind;

static inline __attribute__((always_inline)) float input(input_kind kind, float x, float alpha,
                                                         float beta) {
    if (kind == AFFINE_FUSED) return fmaf(x, alpha, beta);
    if (kind == AFFINE) return x * alpha + beta;
    return x;
}

/* batch_norm_coefficients of channel c of a normalisation. */
static inline void channel_coefficients(const normalisation_t *norm, int64_t c, float *alpha,
                                        float *beta) {
    batch_norm_coefficients(norm->weight, norm->bias, norm->contract, norm->mean[c],
                            norm->invstd[c], c, alpha, beta);
}

#endif
