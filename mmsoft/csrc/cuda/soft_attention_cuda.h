// Host API of the CUDA SOFT attention kernels. Deliberately free of torch headers: plain pointers, int64 sizes and a
// cudaStream_t, so the .cu files compile with nvcc alone (also where torch is a CPU build). cuda_bindings.cpp turns
// tensors into these arguments.
//
// Layouts (row-major, contiguous, batch-major):
//   q (B, N, d), x (B, N, c): "input" dtype (float32 / float16 / bfloat16, given by `kind`)
//   k (B, m, d), y (B, m, c): float32
//   centre (B, d): float32, subtracted from the rows of q and k as they are loaded
// A_ij = exp(-|q_i - k_j|^2 / 2) is recomputed tile by tile and never stored; everything accumulates in float32.
// Distances, hence results, do not depend on the centre; the rounding of the expanded |q|^2 + |k|^2 - 2 q.k does:
// with the landmarks' mean it scales with the rows' spread instead of with an offset they share.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace mmsoft {
namespace cuda {

enum class ScalarKind : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Largest head dim d and value dim c the kernels accept.
constexpr int64_t kMaxChannels = 128;

// How many slices the reductions over N are split into (one partial sum per slice, reduced afterwards).
// The workspace of kernel_t_matmul_forward holds splits * B * m * c floats; that of kernel_grad_cols
// splits * B * m * (d + 1 + (atx ? c : 0)) floats.
int64_t reduction_splits(int64_t batch, int64_t n, int64_t m, int64_t d, int64_t c, int num_sms);

// out (B, N, c) [kind] = A w, w (B, m, c) float32.
cudaError_t kernel_matmul_forward(ScalarKind kind, const void* q, const float* k, const float* centre, const float* w,
                                  void* out, int64_t batch, int64_t n, int64_t m, int64_t d, int64_t c,
                                  cudaStream_t stream);

// out (B, m, c) float32 = A^T v, v (B, N, c) [kind].
cudaError_t kernel_t_matmul_forward(ScalarKind kind, const void* q, const float* k, const float* centre, const void* v,
                                    float* out, float* workspace, int64_t splits, int64_t batch, int64_t n, int64_t m,
                                    int64_t d, int64_t c, cudaStream_t stream);

// Row-side gradients with G = A o (x y^T):  dq (B, N, d) [kind] = G k - rowsum(G) o q,
// and, when ay != nullptr, ay (B, N, c) [kind] = A y.
cudaError_t kernel_grad_rows(ScalarKind kind, const void* q, const float* k, const float* centre, const void* x,
                             const float* y, void* dq, void* ay, int64_t batch, int64_t n, int64_t m, int64_t d,
                             int64_t c, cudaStream_t stream);

// Landmark-side gradients: dk (B, m, d) float32 = G^T q - colsum(G) o k,
// and, when atx != nullptr, atx (B, m, c) float32 = A^T x.
cudaError_t kernel_grad_cols(ScalarKind kind, const void* q, const float* k, const float* centre, const void* x,
                             const float* y, float* dk, float* atx, float* workspace, int64_t splits, int64_t batch,
                             int64_t n, int64_t m, int64_t d, int64_t c, cudaStream_t stream);

}  // namespace cuda
}  // namespace mmsoft
