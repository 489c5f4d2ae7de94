// CPU loops of the fused sampler step (the math is in csrc/include/diffaccel/step.h).
#pragma once
#include "diffaccel/step.h"

namespace diffaccel {
namespace cpu {

// One fused step over a (B, D) layout: parallel over samples, each sample in L1-sized chunks
// (one read of x, the model outputs, the probes and the vjps; one write of x and the probes).
template <typename T>
void sample_step(const StepArgs<T>& args);

}  // namespace cpu
}  // namespace diffaccel
