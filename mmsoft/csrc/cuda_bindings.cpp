// Thin C++ layer between tensors and the torch-free CUDA launchers (compiled only in the CUDA build).
// Operand shapes, dtypes, devices and contiguity are checked in bindings.cpp; this file adds the CUDA-only limits,
// sets the device, allocates outputs and workspaces with torch's caching allocator and launches on the current stream.
// Only c10/cuda headers (not ATen/cuda/CUDAContext.h): they need nothing beyond the CUDA runtime headers.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime_api.h>

#include <tuple>

#include "cuda/soft_attention_cuda.h"
#include "soft_attention.h"

namespace mmsoft {
namespace cuda_impl {
namespace {

cuda::ScalarKind kind_of(const char* op, const at::Tensor& q) {
  switch (q.scalar_type()) {
    case at::kFloat:
      return cuda::ScalarKind::kFloat32;
    case at::kHalf:
      return cuda::ScalarKind::kFloat16;
    case at::kBFloat16:
      return cuda::ScalarKind::kBFloat16;
    default:
      TORCH_CHECK(false, op, ": CUDA kernels support float32, float16 and bfloat16 q, got ", q.scalar_type(),
                  " (float64 runs on the CPU extension or impl='reference')");
  }
}

void check_channels(const char* op, int64_t d, int64_t c) {
  TORCH_CHECK(d <= cuda::kMaxChannels && c <= cuda::kMaxChannels, op, ": CUDA kernels support head dim d and value ",
              "dim c up to ", cuda::kMaxChannels, ", got d = ", d, ", c = ", c, " (use impl='reference')");
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA call failed: ", cudaGetErrorString(err));
}

// Streaming multiprocessors of the current device (sizes the split of the reductions over N).
int num_sms() {
  int device = 0, sms = 0;
  check_launch(cudaGetDevice(&device), "cudaGetDevice");
  check_launch(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device), "cudaDeviceGetAttribute");
  return sms;
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

}  // namespace

int64_t max_channels() { return cuda::kMaxChannels; }

at::Tensor kernel_t_matmul_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& centre,
                                   const at::Tensor& v) {
  constexpr const char* op = "mmsoft kernel_t_matmul (A^T v)";
  const auto kind = kind_of(op, q);
  const int64_t batch = q.size(0), n = q.size(1), d = q.size(2), m = k.size(1), c = v.size(2);
  check_channels(op, d, c);
  const c10::cuda::CUDAGuard guard(q.device());
  auto out = at::empty({batch, m, c}, k.options());
  const int64_t splits = cuda::reduction_splits(batch, n, m, d, c, num_sms());
  auto workspace = at::empty({splits * batch * m * c}, k.options());
  check_launch(cuda::kernel_t_matmul_forward(kind, q.data_ptr(), k.data_ptr<float>(), centre.data_ptr<float>(),
                                             v.data_ptr(), out.data_ptr<float>(), workspace.data_ptr<float>(), splits,
                                             batch, n, m, d, c, current_stream()),
               op);
  return out;
}

at::Tensor kernel_matmul_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& centre,
                                 const at::Tensor& w) {
  constexpr const char* op = "mmsoft kernel_matmul (A w)";
  const auto kind = kind_of(op, q);
  const int64_t batch = q.size(0), n = q.size(1), d = q.size(2), m = k.size(1), c = w.size(2);
  check_channels(op, d, c);
  const c10::cuda::CUDAGuard guard(q.device());
  auto out = at::empty({batch, n, c}, q.options());
  check_launch(cuda::kernel_matmul_forward(kind, q.data_ptr(), k.data_ptr<float>(), centre.data_ptr<float>(),
                                           w.data_ptr<float>(), out.data_ptr(), batch, n, m, d, c, current_stream()),
               op);
  return out;
}

namespace {

// Shared backward with G = A o (x y^T), x (B, N, c) N-sized, y (B, m, c) landmark-sized. The third gradient is A y
// (N-sized, from the rows pass) when `transposed` (out = A^T v: x = v, y = grad_out), else A^T x (landmark-sized,
// from the cols pass; out = A w: x = grad_out, y = w).
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward(const char* op, const at::Tensor& q, const at::Tensor& k,
                                                        const at::Tensor& centre, const at::Tensor& x,
                                                        const at::Tensor& y, bool transposed) {
  const auto kind = kind_of(op, q);
  const int64_t batch = q.size(0), n = q.size(1), d = q.size(2), m = k.size(1), c = x.size(2);
  check_channels(op, d, c);
  const c10::cuda::CUDAGuard guard(q.device());
  const auto stream = current_stream();
  auto dq = at::empty_like(q);
  auto dk = at::empty_like(k);
  auto third = transposed ? at::empty_like(x) : at::empty_like(y);
  check_launch(cuda::kernel_grad_rows(kind, q.data_ptr(), k.data_ptr<float>(), centre.data_ptr<float>(), x.data_ptr(),
                                      y.data_ptr<float>(), dq.data_ptr(), transposed ? third.data_ptr() : nullptr,
                                      batch, n, m, d, c, stream),
               op);
  const int64_t splits = cuda::reduction_splits(batch, n, m, d, c, num_sms());
  auto workspace = at::empty({splits * batch * m * (d + 1 + (transposed ? 0 : c))}, k.options());
  check_launch(cuda::kernel_grad_cols(kind, q.data_ptr(), k.data_ptr<float>(), centre.data_ptr<float>(), x.data_ptr(),
                                      y.data_ptr<float>(), dk.data_ptr<float>(),
                                      transposed ? nullptr : third.data_ptr<float>(), workspace.data_ptr<float>(),
                                      splits, batch, n, m, d, c, stream),
               op);
  return {dq, dk, third};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_t_matmul_backward(const at::Tensor& q, const at::Tensor& k,
                                                                        const at::Tensor& centre,
                                                                        const at::Tensor& v,
                                                                        const at::Tensor& grad_out) {
  return backward("mmsoft kernel_t_matmul_backward", q, k, centre, v, grad_out, /*transposed=*/true);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_matmul_backward(const at::Tensor& q, const at::Tensor& k,
                                                                      const at::Tensor& centre,
                                                                      const at::Tensor& w,
                                                                      const at::Tensor& grad_out) {
  return backward("mmsoft kernel_matmul_backward", q, k, centre, grad_out, w, /*transposed=*/false);
}

}  // namespace

const KernelOps kOps{&kernel_t_matmul_forward, &kernel_matmul_forward, &kernel_t_matmul_backward,
                     &kernel_matmul_backward};

}  // namespace cuda_impl
}  // namespace mmsoft
