// The per-neuron functions of spikezoo/neurons/cuda/neurons.cu, compiled for the CPU with g++
// and called from Python through ctypes (tests/neurons/test_cuda_kernels.py). Each entry point
// loops over the neurons exactly as one kernel thread per neuron would.
#include <type_traits>

#include "neurons.cu"

namespace {

template <class Body>
int with_bool(int flag, Body body) {
  return flag ? body(std::true_type{}) : body(std::false_type{});
}

// Calls body(Neuron<...>{...}) for the runtime configuration; returns -1 for an unknown surrogate.
template <class Body>
int with_neuron(int leaky, int decay_input, int soft_reset, int detach_reset, int surrogate,
                float k, float v_threshold, float v_reset, double alpha, Body body) {
  return with_bool(leaky, [&](auto leaky_) {
    return with_bool(decay_input, [&](auto decay_input_) {
      return with_bool(soft_reset, [&](auto soft_reset_) {
        return with_bool(detach_reset, [&](auto detach_reset_) {
          const auto run = [&](auto surrogate_) {
            return body(spikezoo::Neuron<decltype(leaky_)::value, decltype(decay_input_)::value,
                                         decltype(soft_reset_)::value,
                                         decltype(detach_reset_)::value,
                                         decltype(surrogate_)::value>{k, v_threshold, v_reset,
                                                                      alpha});
          };
          if (surrogate == spikezoo::kSigmoid) {
            return run(std::integral_constant<int, spikezoo::kSigmoid>{});
          }
          if (surrogate == spikezoo::kAtan) {
            return run(std::integral_constant<int, spikezoo::kAtan>{});
          }
          return -1;
        });
      });
    });
  });
}

// Calls body(typed pointer) for dtype 0 (float32), 1 (float16) or 2 (bfloat16).
template <class Body>
int with_storage(int dtype, const void* data, Body body) {
  switch (dtype) {
    case 0:
      return body(static_cast<const float*>(data));
    case 1:
      return body(static_cast<const spikezoo::half_bits*>(data));
    case 2:
      return body(static_cast<const spikezoo::bfloat16_bits*>(data));
    default:
      return -1;
  }
}

}  // namespace

extern "C" {

int spikezoo_forward(int leaky, int decay_input, int soft_reset, int detach_reset, int surrogate,
                     int dtype, long long steps, long long neurons, const void* x,
                     const float* v_init, long long v_init_stride, float k, float v_threshold,
                     float v_reset, void* spikes, float* charged, float* v_final) {
  return with_neuron(
      leaky, decay_input, soft_reset, detach_reset, surrogate, k, v_threshold, v_reset, 0.0,
      [&](const auto& neuron) {
        return with_storage(dtype, x, [&](const auto* x_typed) {
          using Scalar = std::remove_const_t<std::remove_pointer_t<decltype(x_typed)>>;
          for (long long i = 0; i < neurons; ++i) {
            neuron.forward_sequence(i, steps, neurons, x_typed, v_init, v_init_stride,
                                    static_cast<Scalar*>(spikes), charged, v_final);
          }
          return 0;
        });
      });
}

// grad_k_sum (zeroed by the caller) receives the k-gradient sum when it is not null, as in
// backward_kernel; spikezoo_finish_grad_k turns it into dL/dk.
int spikezoo_backward(int leaky, int decay_input, int soft_reset, int detach_reset,
                      int surrogate, int dtype, long long steps, long long neurons,
                      const void* grad_spikes, const float* grad_v_final,
                      long long grad_v_final_stride, const float* charged, const float* v_init,
                      long long v_init_stride, float k, float v_threshold, float v_reset,
                      double alpha, float* grad_x, float* grad_v_init, float* grad_k_sum) {
  return with_neuron(
      leaky, decay_input, soft_reset, detach_reset, surrogate, k, v_threshold, v_reset, alpha,
      [&](const auto& neuron) {
        return with_storage(dtype, grad_spikes, [&](const auto* grad_spikes_typed) {
          for (long long i = 0; i < neurons; ++i) {
            const float partial = neuron.backward_sequence(
                i, steps, neurons, grad_spikes_typed, grad_v_final, grad_v_final_stride, charged,
                v_init, v_init_stride, grad_k_sum != nullptr, grad_x, grad_v_init);
            if (grad_k_sum != nullptr) {
              *grad_k_sum += partial;
            }
          }
          return 0;
        });
      });
}

// As spikezoo_backward, from the forward's input x (dtype of dL/ds) instead of its membranes.
int spikezoo_backward_from_input(int leaky, int decay_input, int soft_reset, int detach_reset,
                                 int surrogate, int dtype, long long steps, long long neurons,
                                 const void* grad_spikes, const float* grad_v_final,
                                 long long grad_v_final_stride, const void* x,
                                 const float* v_init, long long v_init_stride, float k,
                                 float v_threshold, float v_reset, double alpha, float* grad_x,
                                 float* grad_v_init, float* grad_k_sum) {
  return with_neuron(
      leaky, decay_input, soft_reset, detach_reset, surrogate, k, v_threshold, v_reset, alpha,
      [&](const auto& neuron) {
        return with_storage(dtype, grad_spikes, [&](const auto* grad_spikes_typed) {
          const auto* x_typed = static_cast<decltype(grad_spikes_typed)>(x);
          for (long long i = 0; i < neurons; ++i) {
            const float partial = neuron.backward_sequence_from_input(
                i, steps, neurons, grad_spikes_typed, grad_v_final, grad_v_final_stride, x_typed,
                v_init, v_init_stride, grad_k_sum != nullptr, grad_x, grad_v_init);
            if (grad_k_sum != nullptr) {
              *grad_k_sum += partial;
            }
          }
          return 0;
        });
      });
}

// In place, as finish_grad_k_kernel.
int spikezoo_finish_grad_k(int leaky, int decay_input, int soft_reset, int detach_reset,
                           int surrogate, float k, float* grad_k) {
  return with_neuron(leaky, decay_input, soft_reset, detach_reset, surrogate, k, 0.0f, 0.0f, 0.0,
                     [&](const auto& neuron) {
                       *grad_k = neuron.finish_grad_k(*grad_k);
                       return 0;
                     });
}

// Element-wise conversions between float32 and the 16-bit storage types (dtype 1 or 2).
void spikezoo_to_float(int dtype, const unsigned short* bits, float* out, long long count) {
  for (long long i = 0; i < count; ++i) {
    out[i] = dtype == 1 ? spikezoo::half_to_float(bits[i]) : spikezoo::bfloat16_to_float(bits[i]);
  }
}

void spikezoo_from_float(int dtype, const float* values, unsigned short* out, long long count) {
  for (long long i = 0; i < count; ++i) {
    out[i] = dtype == 1 ? spikezoo::float_to_half(values[i])
                        : spikezoo::float_to_bfloat16(values[i]);
  }
}

}  // extern "C"
