// CPU fused optimizer step: the per-element rule of kernels/optim_step.h over groups of 8.
// Compiled with -ffp-contract=off (CMakeLists.txt) so its arithmetic matches the CUDA kernel.
#include <algorithm>

#include "kernels/optim_step.h"

namespace largeout::cpu {

namespace {
// One parallel loop over the groups of all slots (a slot's groups alone would leave the
// threads idle on many small tensors: each slot under the grain ran on one thread).
template <OptimKind K, ElemType P, ElemType S, bool kScaled>
void run(const OptimSlot* slots, const int64_t* first, int num_slots, const OptimTypes& types,
         const OptimHyper& hyper, const ParallelFor& pf) {
  pf(0, first[num_slots], 1 << 11, [&](int64_t begin, int64_t end) {
    // the slot holding group `begin` (the last k with first[k] <= begin; empty slots skipped)
    int k = int(std::upper_bound(first, first + num_slots + 1, begin) - first) - 1;
    for (int64_t v = begin; v < end; ++v) {
      while (v >= first[k + 1]) ++k;
      const OptimSlot& s = slots[k];
      const int64_t i0 = (v - first[k]) * 8;
      optim_update_range<K, P, S, kScaled>(s, types.grad, hyper, i0, int(s.numel - i0 < 8 ? s.numel - i0 : 8));
    }
  });
}
}  // namespace

// scaled: every slot has a row scale (the op checks that all have one or none; an empty
// parameter's scale may be null).
void optim_step(const OptimSlot* slots, const int64_t* group_prefix, int num_slots, const OptimTypes& types,
                const OptimHyper& hyper, bool scaled, const ParallelFor& pf) {
  dispatch_optim(hyper.kind, types.param, types.state, [&]<OptimKind K, ElemType P, ElemType S>() {
    if constexpr (scalable(P)) {
      if (scaled) return run<K, P, S, true>(slots, group_prefix, num_slots, types, hyper, pf);
    }
    run<K, P, S, false>(slots, group_prefix, num_slots, types, hyper, pf);
  });
}

}  // namespace largeout::cpu
