// CPU stochastic rounding (the per-element rule and the random bits are shared with
// the CUDA kernel: kernels/stochastic_round.h).
#include "kernels/stochastic_round.h"

namespace largeout::cpu {

void stochastic_round(SrFormat f, const float* x, void* out, int64_t n, uint64_t seed, uint64_t offset,
                      const ParallelFor& pf) {
  const int bytes = sr_format_info(f).bytes;
  pf(0, n, 1 << 14, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const uint32_t b = sr_round_bits_fast(x[i], f, sr_random_bits(seed, offset, i));
      if (bytes == 2) static_cast<uint16_t*>(out)[i] = uint16_t(b);
      else static_cast<uint8_t*>(out)[i] = uint8_t(b);
    }
  });
}

}  // namespace largeout::cpu
