/* Spikes saved for backward as bits, on the CPU: float32 spikes packed 8 to a byte and expanded
   again, for spikezoo.neurons.saved_spikes, as NumPy's packbits and unpackbits (bitorder
   "little": value 8 * j + i is bit i of byte j, the last byte's unused bits 0) compute them.

   NumPy takes three passes to pack (a comparison into a bool array, a maximum or a count over
   the values, packbits) and two to expand (unpackbits into bytes, a conversion into floats),
   on one thread, each writing a temporary array. Here packing reads each value once and writes
   only the bits, checking on the way that every value is +0.0 or 1.0; expansion writes each
   float once. Bytes are shared among OpenMP threads (PyTorch's own pool where PyTorch uses
   libgomp) in blocks of whole cache lines of output. */

#include <stdint.h>

#define ONE_BITS 0x3f800000u /* 1.0f */

/* Output bytes per block a thread takes: a whole number of cache lines of bits. */
#define BLOCK 4096

/* Pack values [0, n) of `x` (float32 bit patterns) into `bits` (ceil(n / 8) bytes).
   Returns 1 if every value was +0.0 or 1.0, else 0 (then `bits` is not to be used). */
int pack_spikes_f32(const uint32_t *restrict x, int64_t n, uint8_t *restrict bits, int threads) {
    const int64_t bytes = (n + 7) / 8, full = n / 8, blocks = (bytes + BLOCK - 1) / BLOCK;
    int64_t others = 0;
#pragma omp parallel for schedule(static) num_threads(threads) reduction(+ : others) \
    if (blocks > 1)
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t j0 = block * BLOCK, j1 = j0 + BLOCK < full ? j0 + BLOCK : full;
        uint32_t odd = 0;
        for (int64_t j = j0; j < j1; j++) {
            const uint32_t *v = x + 8 * j;
            uint32_t byte = 0;
            for (int i = 0; i < 8; i++) {
                byte |= (uint32_t)(v[i] == ONE_BITS) << i;
                odd |= (v[i] != 0u) & (v[i] != ONE_BITS);
            }
            bits[j] = (uint8_t)byte;
        }
        others += odd != 0;
    }
    if (full < bytes) { /* the last, partial byte */
        uint32_t byte = 0;
        for (int64_t k = 8 * full; k < n; k++) {
            byte |= (uint32_t)(x[k] == ONE_BITS) << (k - 8 * full);
            others += x[k] != 0u && x[k] != ONE_BITS;
        }
        bits[full] = (uint8_t)byte;
    }
    return others == 0;
}

/* Expand the first n bits of `bits` into float32 0.0 and 1.0 values `out` [n]. */
void expand_spikes_f32(const uint8_t *restrict bits, int64_t n, float *restrict out,
                       int threads) {
    const int64_t full = n / 8, blocks = (full + BLOCK - 1) / BLOCK;
#pragma omp parallel for schedule(static) num_threads(threads) if (blocks > 1)
    for (int64_t block = 0; block < blocks; block++) {
        const int64_t j1 = (block + 1) * BLOCK < full ? (block + 1) * BLOCK : full;
        for (int64_t j = block * BLOCK; j < j1; j++) {
            const uint32_t byte = bits[j];
            for (int i = 0; i < 8; i++) out[8 * j + i] = (float)((byte >> i) & 1u);
        }
    }
    for (int64_t k = 8 * full; k < n; k++) out[k] = (float)((bits[full] >> (k - 8 * full)) & 1u);
}
