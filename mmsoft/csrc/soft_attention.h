// Torch-level declarations of the fused SOFT attention kernels (shared by bindings, CPU and CUDA code).
//
// Shapes (all contiguous, 3-D, batch B = product of the leading dims):
//   q (B, N, d) and x (B, N, c) of an "input" dtype T (float16 / bfloat16 / float32 / float64),
//   k (B, m, d) and y (B, m, c) of the accumulation dtype acc(T) (float32, or float64 for T = float64).
// A = exp(-|q_i - k_j|^2 / 2) is never materialised: it is recomputed tile by tile.
// centre (B, 1, d) in acc(T) is subtracted from q and k before the distance is expanded as |q|^2 + |k|^2 - 2 q.k:
// distances do not change (any centre gives the same A and the same gradients), but the expansion's cancellation
// error then scales with the rows' spread around the centre instead of with an offset they share. bindings.cpp passes
// the landmarks' mean.
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "exp_floor.h"

namespace mmsoft {

// Accumulation dtype of an input dtype: float64 stays float64, everything else accumulates in float32. The only
// such mapping in the C++ code; exported as mmsoft._ext.acc_dtype, and tests/ops/test_ext_kernels.py checks that it
// agrees with mmsoft.ops.precision.acc_dtype.
constexpr at::ScalarType acc_type_of(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// The exponent floor (exp_floor.h) of the kernels for inputs of dtype t (that of its accumulation dtype).
constexpr double exp_floor_of(at::ScalarType t) {
  return acc_type_of(t) == at::kDouble ? kExpFloorDouble : static_cast<double>(kExpFloorFloat);
}

// out = A^T v: (B, m, c) in acc(T); out = A w: (B, N, c) in T.
using ForwardFn = at::Tensor (*)(const at::Tensor& q, const at::Tensor& k, const at::Tensor& centre,
                                 const at::Tensor& x_or_w);
// (dq [T], dk [acc], third): the gradients of one forward op given its grad_out.
using BackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor> (*)(const at::Tensor& q, const at::Tensor& k,
                                                                      const at::Tensor& centre,
                                                                      const at::Tensor& v_or_w,
                                                                      const at::Tensor& grad_out);

// The four ops of one backend (cpu::kOps, cuda_impl::kOps); bindings.cpp validates and picks one by q's device.
struct KernelOps {
  ForwardFn t_matmul_forward;    // A^T v
  ForwardFn matmul_forward;      // A w
  BackwardFn t_matmul_backward;  // of A^T v, grad_out (B, m, c) in acc(T): (dq [T], dk [acc], dv [T])
  BackwardFn matmul_backward;    // of A w, grad_out (B, N, c) in T: (dq [T], dk [acc], dw [acc])
};

namespace cpu {
extern const KernelOps kOps;
// t_matmul_backward computing only dv[..., :dv_cols] = A grad_out[..., :dv_cols] (0 < dv_cols <= c): the one-node
// products backward (mmsoft/ops/ext_products.py) needs A g of A [g, w] and skips the GEMM of the other columns.
std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_t_matmul_backward_cols(const at::Tensor& q, const at::Tensor& k,
                                                                             const at::Tensor& centre,
                                                                             const at::Tensor& v,
                                                                             const at::Tensor& grad_out,
                                                                             int64_t dv_cols);
}  // namespace cpu

#ifdef MMSOFT_WITH_CUDA
namespace cuda_impl {
extern const KernelOps kOps;
// Largest head / value dim the CUDA kernels accept.
int64_t max_channels();
}  // namespace cuda_impl
#endif

}  // namespace mmsoft
