// Fused multi-step LIF / PLIF / IF neurons for spikezoo's "cupy" backend.
//
// One thread owns one neuron and walks all T steps: `forward_kernel` runs the dynamics,
// `backward_kernel` runs back-propagation through time in reverse from the charged membranes
// h[t] saved by a forward pass (one float32 [T, N] tensor), and `backward_from_input_kernel`
// does the same from the forward's input x instead, recharging each neuron's membranes first
// (in its thread's local memory up to kLocalSteps steps, else in the gradient's own buffer), so
// that a training forward keeps nothing but x. Tensors are time-major and dense, [T, N]; the
// Python side flattens any trailing shape and layout first.
//
// The arithmetic of one neuron is written once, as __host__ __device__ functions: the kernels
// call them on the GPU, and the test suite compiles this file with g++ and calls them on the
// CPU against the eager PyTorch loops (spikezoo/neurons, spikingjelly's multi-step semantics):
//
//   h[t] = v[t-1] + (x[t] - (v[t-1] - v_rest)) * k     leaky, decay_input
//   h[t] = v[t-1] - (v[t-1] - v_rest) * k + x[t]       leaky, no decay_input
//   h[t] = v[t-1] + x[t]                               integrate-and-fire
//   s[t] = h[t] >= v_threshold (NaN where h[t] is NaN)
//   v[t] = s[t] ? v_reset : h[t]                        hard reset
//   v[t] = h[t] - s[t] * v_threshold                    soft reset (v_rest = 0)
//
// Charging, firing and resetting are the eager loops' float32 operations in their order, and the
// Python side compiles with -fmad=false so that no multiply-add is contracted: the membranes
// round as in PyTorch. (The surrogates' exp and division may differ in the last bits.) Half-precision tensors
// (float16, bfloat16) are converted to float32 on load and back on store, here, by bit
// manipulation, so that no CUDA header is needed and the host build tests the conversions too.
//
// Configurations are template parameters (one instantiation per configuration and dtype); the
// thresholds, reset value and surrogate alpha are kernel arguments, the decay k a device
// pointer (PLIF's k = sigmoid(w) stays on the GPU).

#ifndef __CUDACC_RTC__
#include <math.h>
#include <string.h>
#endif
#ifndef __CUDACC__
#define __host__
#define __device__
#endif

namespace spikezoo {

// ---------------------------------------------------------------- storage types and conversions

// A float16 / bfloat16 element, as its 16 bits.
struct half_bits {
  unsigned short bits;
};
struct bfloat16_bits {
  unsigned short bits;
};

__host__ __device__ inline float float_from_bits(unsigned int bits) {
#ifdef __CUDA_ARCH__
  return __uint_as_float(bits);
#else
  float value;
  memcpy(&value, &bits, sizeof value);
  return value;
#endif
}

__host__ __device__ inline unsigned int bits_from_float(float value) {
#ifdef __CUDA_ARCH__
  return __float_as_uint(value);
#else
  unsigned int bits;
  memcpy(&bits, &value, sizeof bits);
  return bits;
#endif
}

__host__ __device__ inline float half_to_float(unsigned short half) {
  const unsigned int sign = (half & 0x8000u) << 16;
  const unsigned int exponent = (half >> 10) & 0x1fu;
  const unsigned int mantissa = half & 0x3ffu;
  if (exponent == 0x1fu) {  // infinity or NaN (payload kept)
    return float_from_bits(sign | 0x7f800000u | (mantissa << 13));
  }
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float32
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  return float_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

// Round to nearest even, as PyTorch's c10::Half; NaN becomes the quiet NaN 0x7e00 (signed).
__host__ __device__ inline unsigned short float_to_half(float value) {
  const unsigned int bits = bits_from_float(value);
  const unsigned short sign = static_cast<unsigned short>((bits >> 16) & 0x8000u);
  const unsigned int magnitude = bits & 0x7fffffffu;
  if (magnitude >= 0x47800000u) {  // >= 2^16: infinity, or NaN
    return static_cast<unsigned short>(sign | (magnitude > 0x7f800000u ? 0x7e00u : 0x7c00u));
  }
  if (magnitude < 0x38800000u) {  // below 2^-14: a subnormal half, rounded by a float add
    const float magic = 0.5f;  // 2^-1: its ulp is 2^-24, the subnormal half step
    const float sum = float_from_bits(magnitude) + magic;
    return static_cast<unsigned short>(sign | (bits_from_float(sum) - bits_from_float(magic)));
  }
  const unsigned int odd = (magnitude >> 13) & 1u;
  // Rebias the exponent (127 -> 15) and round half to even; a carry may reach infinity.
  const unsigned int rounded = magnitude - (112u << 23) + 0xfffu + odd;
  return static_cast<unsigned short>(sign | (rounded >> 13));
}

__host__ __device__ inline float bfloat16_to_float(unsigned short bfloat16) {
  return float_from_bits(static_cast<unsigned int>(bfloat16) << 16);
}

// Round to nearest even, as PyTorch's c10::BFloat16; NaN becomes 0x7fc0.
__host__ __device__ inline unsigned short float_to_bfloat16(float value) {
  const unsigned int bits = bits_from_float(value);
  if ((bits & 0x7fffffffu) > 0x7f800000u) {
    return static_cast<unsigned short>(0x7fc0u);
  }
  return static_cast<unsigned short>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

__host__ __device__ inline float load(const float* data, long long index) { return data[index]; }
__host__ __device__ inline float load(const half_bits* data, long long index) {
  return half_to_float(data[index].bits);
}
__host__ __device__ inline float load(const bfloat16_bits* data, long long index) {
  return bfloat16_to_float(data[index].bits);
}

__host__ __device__ inline void store(float* data, long long index, float value) {
  data[index] = value;
}
__host__ __device__ inline void store(half_bits* data, long long index, float value) {
  data[index].bits = float_to_half(value);
}
__host__ __device__ inline void store(bfloat16_bits* data, long long index, float value) {
  data[index].bits = float_to_bfloat16(value);
}

// ---------------------------------------------------------------- one neuron

enum Surrogate { kSigmoid = 0, kAtan = 1 };

// Sequences up to this many steps are recharged in an array of the thread's own (local, cached)
// memory by the backward pass from the input; longer ones in the gradient's buffer.
constexpr long long kLocalSteps = 16;

// The charged membrane h[t] of neuron i in a [T, N] tensor, or in an array of its own ([T]).
struct StridedMembranes {
  const float* data;
  long long neurons;
  long long i;
  __host__ __device__ float operator()(long long t) const { return data[t * neurons + i]; }
};
struct OwnMembranes {
  const float* data;
  __host__ __device__ float operator()(long long t) const { return data[t]; }
};

// The dynamics of one configuration. `k` is the decay (unused without a leak), `v_reset` the
// hard-reset value (unused under soft reset), `alpha` the surrogate's sharpness: a double, as in
// the eager loops, where the constants derived from it are rounded to float32 once.
template <bool Leaky, bool DecayInput, bool SoftReset, bool DetachReset, int SurrogateKind>
struct Neuron {
  float k;
  float v_threshold;
  float v_reset;
  float alpha;       // sigmoid: alpha
  float atan_scale;  // atan: pi / 2 * alpha
  float atan_peak;   // atan: alpha / 2

  __host__ __device__ Neuron(float k_, float v_threshold_, float v_reset_, double alpha_)
      : k(k_),
        v_threshold(v_threshold_),
        v_reset(v_reset_),
        alpha(static_cast<float>(alpha_)),
        atan_scale(static_cast<float>(3.14159265358979323846 / 2.0 * alpha_)),
        atan_peak(static_cast<float>(alpha_ / 2.0)) {}

  // The potential the leak pulls towards: 0 under soft reset, as in spikingjelly.
  __host__ __device__ float v_rest() const { return SoftReset ? 0.0f : v_reset; }

  __host__ __device__ float charge(float x, float v) const {
    if (!Leaky) {
      return v + x;
    }
    const float above_rest = v - v_rest();
    if (DecayInput) {
      return v + (x - above_rest) * k;
    }
    return v - above_rest * k + x;
  }

  // 1 or 0, and NaN for a NaN membrane (which then stays NaN).
  __host__ __device__ float spike(float h) const {
    if (h >= v_threshold) {
      return 1.0f;
    }
    return h < v_threshold ? 0.0f : h;
  }

  __host__ __device__ float reset(float h) const {
    const bool fired = h >= v_threshold;
    if (SoftReset) {
      return h - (fired ? 1.0f : 0.0f) * v_threshold;
    }
    return fired ? v_reset : h;
  }

  // dS/du at u = h - v_threshold.
  __host__ __device__ float surrogate_grad(float u) const {
    if (SurrogateKind == kSigmoid) {
      const float sig = 1.0f / (1.0f + expf(-(u * alpha)));
      return (1.0f - sig) * sig * alpha;
    }
    const float scaled = atan_scale * u;
    return atan_peak / (1.0f + scaled * scaled);
  }

  // One reverse step at the charged membrane h (v_prev: the membrane before it). Takes dL/ds and
  // dL/dv[t] (in grad_v, replaced by dL/dv[t-1]); returns dL/dx[t]; adds dL/dh * dh/dk (with
  // decay_input: times k, divided out by finish_grad_k) to grad_k_sum when it is not null.
  __host__ __device__ float backward_step(float h, float v_prev, float grad_spike, float& grad_v,
                                          float* grad_k_sum) const {
    const float u = h - v_threshold;
    const float dspike = surrogate_grad(u);
    float dv_dh;
    if (SoftReset) {
      dv_dh = DetachReset ? 1.0f : 1.0f - v_threshold * dspike;
    } else {
      dv_dh = u < 0.0f ? 1.0f : 0.0f;
      if (!DetachReset) {
        dv_dh = dv_dh + (v_reset - h) * dspike;
      }
    }
    const float grad_h = grad_spike * dspike + grad_v * dv_dh;
    if (!Leaky) {
      grad_v = grad_h;
      return grad_h;
    }
    if (grad_k_sum != nullptr) {
      // With decay_input, dh/dk = x - (v_prev - v_rest) = (h - v_prev) / k.
      const float dh_dk = DecayInput ? h - v_prev : v_rest() - v_prev;
      *grad_k_sum += grad_h * dh_dk;
    }
    grad_v = grad_h * (1.0f - k);
    return DecayInput ? grad_h * k : grad_h;
  }

  // dL/dk from the sum of backward_step's terms over all steps and neurons.
  __host__ __device__ float finish_grad_k(float grad_k_sum) const {
    if (!DecayInput) {
      return grad_k_sum;
    }
    return k > 0.0f ? grad_k_sum / k : 0.0f;  // k underflows to 0 only for an extreme PLIF w
  }

  // All T forward steps of neuron i. `v_init` holds one value per neuron, or one for all
  // (v_init_stride 0). `charged` (the [T, N] membranes for the backward pass) and `v_final`
  // (the [N] membranes after the last step) may be null: nothing is written there.
  template <typename Scalar>
  __host__ __device__ void forward_sequence(long long i, long long steps, long long neurons,
                                            const Scalar* x, const float* v_init,
                                            long long v_init_stride, Scalar* spikes,
                                            float* charged, float* v_final) const {
    float v = v_init[i * v_init_stride];
    for (long long t = 0; t < steps; ++t) {
      const long long index = t * neurons + i;
      const float h = charge(load(x, index), v);
      store(spikes, index, spike(h));
      if (charged != nullptr) {
        charged[index] = h;
      }
      v = reset(h);
    }
    if (v_final != nullptr) {
      v_final[i] = v;
    }
  }

  // All T reverse steps of neuron i; returns its share of the k-gradient sum (0 when
  // grad_k_needed is false). `grad_v_final` and `v_init` may be shared (stride 0); `grad_v_init`
  // may be null (dL/dv_init is then not written).
  template <typename Scalar>
  __host__ __device__ float backward_sequence(long long i, long long steps, long long neurons,
                                              const Scalar* grad_spikes,
                                              const float* grad_v_final,
                                              long long grad_v_final_stride,
                                              const float* charged, const float* v_init,
                                              long long v_init_stride, bool grad_k_needed,
                                              float* grad_x, float* grad_v_init) const {
    return walk_back(i, steps, neurons, grad_spikes, grad_v_final, grad_v_final_stride,
                     StridedMembranes{charged, neurons, i}, v_init, v_init_stride, grad_k_needed,
                     grad_x, grad_v_init);
  }

  // backward_sequence from the input x [T, N] of the forward pass: the membranes are charged
  // again first, then walked back. Up to kLocalSteps steps they stay in the thread's own array;
  // longer sequences charge them into grad_x, where each is read before its step's gradient
  // overwrites it.
  template <typename Scalar>
  __host__ __device__ float backward_sequence_from_input(
      long long i, long long steps, long long neurons, const Scalar* grad_spikes,
      const float* grad_v_final, long long grad_v_final_stride, const Scalar* x,
      const float* v_init, long long v_init_stride, bool grad_k_needed, float* grad_x,
      float* grad_v_init) const {
    if (steps <= kLocalSteps) {
      float membranes[kLocalSteps];
      recharge(i, steps, neurons, x, v_init, v_init_stride, membranes, 1);
      return walk_back(i, steps, neurons, grad_spikes, grad_v_final, grad_v_final_stride,
                       OwnMembranes{membranes}, v_init, v_init_stride, grad_k_needed, grad_x,
                       grad_v_init);
    }
    recharge(i, steps, neurons, x, v_init, v_init_stride, grad_x + i, neurons);
    return walk_back(i, steps, neurons, grad_spikes, grad_v_final, grad_v_final_stride,
                     StridedMembranes{grad_x, neurons, i}, v_init, v_init_stride, grad_k_needed,
                     grad_x, grad_v_init);
  }

 private:
  // The charged membranes of neuron i, h[t] written to charged[t * charged_stride].
  template <typename Scalar>
  __host__ __device__ void recharge(long long i, long long steps, long long neurons,
                                    const Scalar* x, const float* v_init,
                                    long long v_init_stride, float* charged,
                                    long long charged_stride) const {
    float v = v_init[i * v_init_stride];
    for (long long t = 0; t < steps; ++t) {
      const float h = charge(load(x, t * neurons + i), v);
      charged[t * charged_stride] = h;
      v = reset(h);
    }
  }

  // The reverse walk of neuron i over its charged membranes h[t] = charged_at(t).
  template <typename Scalar, typename Membranes>
  __host__ __device__ float walk_back(long long i, long long steps, long long neurons,
                                      const Scalar* grad_spikes, const float* grad_v_final,
                                      long long grad_v_final_stride, Membranes charged_at,
                                      const float* v_init, long long v_init_stride,
                                      bool grad_k_needed, float* grad_x,
                                      float* grad_v_init) const {
    float grad_v = grad_v_final[i * grad_v_final_stride];
    float grad_k_sum = 0.0f;
    float* grad_k_term = grad_k_needed ? &grad_k_sum : nullptr;
    // Each charged membrane is read once: h[t-1] gives v[t-1] now and is h at the next step.
    float h = charged_at(steps - 1);
    for (long long t = steps - 1; t >= 0; --t) {
      const long long index = t * neurons + i;
      const float h_prev = t > 0 ? charged_at(t - 1) : 0.0f;
      const float v_prev = t > 0 ? reset(h_prev) : v_init[i * v_init_stride];
      grad_x[index] = backward_step(h, v_prev, load(grad_spikes, index), grad_v, grad_k_term);
      h = h_prev;
    }
    if (grad_v_init != nullptr) {
      grad_v_init[i] = grad_v;
    }
    return grad_k_sum;
  }
};

// ---------------------------------------------------------------- kernels

#ifdef __CUDACC__

// Adds `value` of every thread of the block to *total (one atomicAdd per block).
__device__ inline void block_sum_into(float value, float* total) {
  __shared__ float warp_sums[32];
  const unsigned int lane = threadIdx.x % 32u;
  const unsigned int warp = threadIdx.x / 32u;
  for (int offset = 16; offset > 0; offset /= 2) {
    value += __shfl_down_sync(0xffffffffu, value, offset);
  }
  if (lane == 0) {
    warp_sums[warp] = value;
  }
  __syncthreads();
  if (warp == 0) {
    const unsigned int warps = (blockDim.x + 31u) / 32u;
    value = lane < warps ? warp_sums[lane] : 0.0f;
    for (int offset = 16; offset > 0; offset /= 2) {
      value += __shfl_down_sync(0xffffffffu, value, offset);
    }
    if (lane == 0) {
      atomicAdd(total, value);
    }
  }
}

// Launch with blockDim.x a multiple of 32 (at most 1024); any grid size (grid-stride loop).
template <typename Scalar, bool Leaky, bool DecayInput, bool SoftReset, bool DetachReset,
          int SurrogateKind>
__global__ void forward_kernel(const Scalar* x, const float* v_init, long long v_init_stride,
                               const float* k, float v_threshold, float v_reset, Scalar* spikes,
                               float* charged, float* v_final, long long steps,
                               long long neurons) {
  const Neuron<Leaky, DecayInput, SoftReset, DetachReset, SurrogateKind> neuron{
      *k, v_threshold, v_reset, 0.0};
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < neurons;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    neuron.forward_sequence(i, steps, neurons, x, v_init, v_init_stride, spikes, charged,
                            v_final);
  }
}

// Calls walk(i) for every neuron i (a grid-stride loop: any grid size) and, when grad_k_sum is
// not null, adds the k-gradient shares it returns to *grad_k_sum.
template <typename Walk>
__device__ inline void walk_back_every_neuron(long long neurons, float* grad_k_sum, Walk walk) {
  float partial = 0.0f;
  for (long long i = blockIdx.x * static_cast<long long>(blockDim.x) + threadIdx.x; i < neurons;
       i += static_cast<long long>(gridDim.x) * blockDim.x) {
    partial += walk(i);
  }
  if (grad_k_sum != nullptr) {
    block_sum_into(partial, grad_k_sum);
  }
}

// grad_k_sum (zeroed by the caller) receives the k-gradient sum when it is not null; finish it
// with finish_grad_k_kernel.
template <typename Scalar, bool Leaky, bool DecayInput, bool SoftReset, bool DetachReset,
          int SurrogateKind>
__global__ void backward_kernel(const Scalar* grad_spikes, const float* grad_v_final,
                                long long grad_v_final_stride, const float* charged,
                                const float* v_init, long long v_init_stride, const float* k,
                                float v_threshold, float v_reset, double alpha, float* grad_x,
                                float* grad_v_init, float* grad_k_sum, long long steps,
                                long long neurons) {
  const Neuron<Leaky, DecayInput, SoftReset, DetachReset, SurrogateKind> neuron{
      *k, v_threshold, v_reset, alpha};
  walk_back_every_neuron(neurons, grad_k_sum, [&](long long i) {
    return neuron.backward_sequence(i, steps, neurons, grad_spikes, grad_v_final,
                                    grad_v_final_stride, charged, v_init, v_init_stride,
                                    grad_k_sum != nullptr, grad_x, grad_v_init);
  });
}

// backward_kernel from the forward's input x instead of its charged membranes.
template <typename Scalar, bool Leaky, bool DecayInput, bool SoftReset, bool DetachReset,
          int SurrogateKind>
__global__ void backward_from_input_kernel(const Scalar* grad_spikes, const float* grad_v_final,
                                           long long grad_v_final_stride, const Scalar* x,
                                           const float* v_init, long long v_init_stride,
                                           const float* k, float v_threshold, float v_reset,
                                           double alpha, float* grad_x, float* grad_v_init,
                                           float* grad_k_sum, long long steps,
                                           long long neurons) {
  const Neuron<Leaky, DecayInput, SoftReset, DetachReset, SurrogateKind> neuron{
      *k, v_threshold, v_reset, alpha};
  walk_back_every_neuron(neurons, grad_k_sum, [&](long long i) {
    return neuron.backward_sequence_from_input(i, steps, neurons, grad_spikes, grad_v_final,
                                               grad_v_final_stride, x, v_init, v_init_stride,
                                               grad_k_sum != nullptr, grad_x, grad_v_init);
  });
}

// One thread: turns the reduced sum into dL/dk, in place.
template <bool Leaky, bool DecayInput, bool SoftReset, bool DetachReset, int SurrogateKind>
__global__ void finish_grad_k_kernel(const float* k, float* grad_k) {
  const Neuron<Leaky, DecayInput, SoftReset, DetachReset, SurrogateKind> neuron{*k, 0.0f, 0.0f,
                                                                                 0.0};
  *grad_k = neuron.finish_grad_k(*grad_k);
}

#endif  // __CUDACC__

}  // namespace spikezoo
