// The entry function of the Gaussian kernel tiles on the CPU: a <- exp(clamp(a, floor, 0)) in place.
//
// Why not ATen's clamp_ + exp_: measured on one core of an AMD EPYC (AVX-512), ATen's float32 exp takes 0.6 ns per
// element (a 124 x 1050 tile: 77 us, as long as the tile's GEMM), this loop ~0.08 ns (10 us), and one pass instead of
// two. On arguments already clamped to [floor, 0] a short polynomial is exact to ~1 ulp (no range reduction of large
// or positive arguments, no overflow, no subnormal results: exp(-87) = 1.6e-38 is a normal number).
#pragma once

#include <ATen/ATen.h>

#include <string>

namespace mmsoft {
namespace cpu {

// a <- exp(min(max(a, exp_floor_of(a.dtype)), 0)), elementwise, in place; NaN stays NaN (+inf gives 1, -inf the floor).
// float32 contiguous tensors take a vector loop (AVX-512F or AVX2 + FMA, chosen once at run time from the CPU);
// every other case (float64, no such CPU) ATen's clamp_ + exp_.
void clamped_exp_(at::Tensor& a);

// Which loop clamped_exp_ runs for float32 on this CPU: "avx512", "avx2" or "aten" (reported in build_info()).
const char* clamped_exp_path();

// clamped_exp_ by the named loop ("avx512", "avx2" or "aten"), for tests of each loop on one machine; raises if the
// name is unknown or this CPU cannot run that loop.
void clamped_exp_by_(at::Tensor& a, const std::string& loop);

}  // namespace cpu
}  // namespace mmsoft
