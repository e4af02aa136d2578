// Floor of the exponent of every Gaussian kernel entry exp(min(arg, 0)) in the fused kernels (CPU and CUDA).
//
// arg is clamped from below at the smallest integer above log(smallest normal number) of the accumulation dtype:
// float32 -87, float64 -708. An entry that would underflow to a subnormal or to zero (a query more than ~13.2 apart
// from a landmark) becomes exp(floor) = 1.6e-38 / 3.3e-308 instead: far below any value that reaches an output, but
// ATen's vectorised CPU exp takes a slow path for every argument under log(smallest normal), 12-31x slower (measured:
// a 124 x 1050 float32 tile 80 us -> 2.5 ms), and realistic activations put whole tiles there.
// mmsoft.ops.precision.exp_floor states the same rule for the PyTorch reference; tests/ops/test_ext_kernels.py checks
// that the two agree (exported as mmsoft._ext.exp_floor).
#pragma once

namespace mmsoft {

constexpr float kExpFloorFloat = -87.0f;
constexpr double kExpFloorDouble = -708.0;

}  // namespace mmsoft
