// Device building blocks shared by the SOFT attention CUDA kernels (no torch headers).
//
// Every kernel works on square tiles of TILE query rows x TILE landmarks. A block of (TILE/4)^2 threads computes the
// tile's Gaussian kernel values with a 4 x 4 register micro-tile per thread (rows ty + TS*i, landmarks tx + TS*j),
// parks them in shared memory and consumes them right away in a second product; A is never written to global memory.
// Operand tiles are staged in shared memory transposed ([channel][row], padded leading dim TILE + 1) as float, so both
// the micro-tile dot products and the channel loops read conflict-free. All accumulation is float32; indices into
// global memory are int64.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "../exp_floor.h"
#include "soft_attention_cuda.h"

// Every launch goes through this macro. tests/ops/cuda_emulation/ redefines it (and the CUDA headers) to run these
// very kernels block by block on CPU threads, which checks their indexing and synchronisation without a GPU.
#ifndef MMSOFT_KERNEL_LAUNCH
#define MMSOFT_KERNEL_LAUNCH(kernel, grid, block, smem, stream) kernel<<<(grid), (block), (smem), (stream)>>>
#endif

namespace mmsoft {
namespace cuda {
namespace detail {

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

template <int kTile, int kMaxChannels>
struct TileCfg {
  static constexpr int TILE = kTile;                          // query rows and landmarks per tile
  static constexpr int TS = kTile / 4;                        // thread grid side (4 x 4 micro-tile per thread)
  static constexpr int THREADS = TS * TS;
  static constexpr int MAXC = kMaxChannels;                   // bound on d and c
  static constexpr int CPT = (kMaxChannels + TS - 1) / TS;    // channels per thread: tx + TS * b
  static constexpr int LD = kTile + 1;                        // padded leading dim of the transposed tiles
};

// Tile edge used for head / value dims up to `widest`: 64 up to 32 channels, 32 above (keeps shared memory < 99 KiB).
inline int64_t tile_for(int64_t d, int64_t c) { return (d > c ? d : c) <= 32 ? 64 : 32; }

template <typename T>
struct TypeTag {
  using type = T;
};
template <class C>
struct CfgTag {
  using cfg = C;
};

template <typename F>
cudaError_t dispatch_kind(ScalarKind kind, F&& f) {
  switch (kind) {
    case ScalarKind::kFloat32:
      return f(TypeTag<float>{});
    case ScalarKind::kFloat16:
      return f(TypeTag<__half>{});
    case ScalarKind::kBFloat16:
      return f(TypeTag<__nv_bfloat16>{});
  }
  return cudaErrorInvalidValue;
}

template <typename F>
cudaError_t dispatch_cfg(int64_t d, int64_t c, F&& f) {
  const int64_t widest = d > c ? d : c;
  if (d < 1 || c < 1 || widest > kMaxChannels) return cudaErrorInvalidValue;
  if (widest <= 32) return f(CfgTag<TileCfg<64, 32>>{});
  if (widest <= 64) return f(CfgTag<TileCfg<32, 64>>{});
  return f(CfgTag<TileCfg<32, 128>>{});
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Raises the dynamic shared memory limit of `kernel` when it needs more than the default 48 KiB.
template <typename Kernel>
cudaError_t prepare_smem(Kernel kernel, size_t bytes) {
  if (bytes <= 48 * 1024) return cudaSuccess;
  int device = 0, optin = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  err = cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device);
  if (err != cudaSuccess) return err;
  if (bytes > static_cast<size_t>(optin)) return cudaErrorInvalidConfiguration;
  return cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes));
}

// Rows [row0, row0 + TILE) of the row-major (rows x width) matrix `src`, transposed into dst[e * LD + r] as float;
// rows at or past `row_end` read as zero. Consecutive threads read consecutive global addresses. With a `centre`
// (width floats), centre[e] is subtracted from every row after the conversion to float (q and k tiles, see the
// centre in soft_attention_cuda.h).
template <class C, typename T>
__device__ __forceinline__ void load_rows_transposed(const T* __restrict__ src, int64_t row0, int64_t row_end,
                                                     int width, float* __restrict__ dst,
                                                     const float* __restrict__ centre = nullptr) {
  const int total = C::TILE * width;
  for (int idx = threadIdx.x; idx < total; idx += C::THREADS) {
    const int r = idx / width;
    const int e = idx - r * width;
    const int64_t row = row0 + r;
    const float shift = centre != nullptr ? centre[e] : 0.f;
    dst[e * C::LD + r] = row < row_end ? to_float(src[row * width + e]) - shift : 0.f;
  }
}

// out[r] = -|t[:, r]|^2 / 2 for the TILE columns of a transposed tile.
template <class C>
__device__ __forceinline__ void half_sq_norms(const float* __restrict__ t, int width, float* __restrict__ out) {
  for (int r = threadIdx.x; r < C::TILE; r += C::THREADS) {
    float s = 0.f;
    for (int e = 0; e < width; ++e) {
      const float v = t[e * C::LD + r];
      s = fmaf(v, v, s);
    }
    out[r] = -0.5f * s;
  }
}

// s[i][j] = <a[:, ty + TS*i], b[:, tx + TS*j]> over `width` channels of two transposed tiles.
template <class C>
__device__ __forceinline__ void micro_dot(const float* __restrict__ a, const float* __restrict__ b, int width,
                                          int ty, int tx, float (&s)[4][4]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) s[i][j] = 0.f;
  }
  for (int e = 0; e < width; ++e) {
    const float* ar = a + e * C::LD;
    const float* br = b + e * C::LD;
    float av[4], bv[4];
#pragma unroll
    for (int i = 0; i < 4; ++i) av[i] = ar[ty + C::TS * i];
#pragma unroll
    for (int j = 0; j < 4; ++j) bv[j] = br[tx + C::TS * j];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
#pragma unroll
      for (int j = 0; j < 4; ++j) s[i][j] = fmaf(av[i], bv[j], s[i][j]);
    }
  }
}

// exp(-|q - k|^2 / 2) from q.k - |q|^2/2 - |k|^2/2; the upper clamp removes rounding noise above 0 (as the reference
// does), the lower one is the exponent floor of the CPU kernels (../exp_floor.h), so both compute the same entries.
__device__ __forceinline__ float gauss(float arg) { return expf(fminf(fmaxf(arg, kExpFloorFloat), 0.f)); }

// The Gaussian tile fill, in place: s[i][j] = <q_r, k_j> of this thread's micro-tile (micro_dot of the centred q and
// k tiles: rows r = ty + TS*i, landmarks jl = tx + TS*j) becomes A = exp(-|q_r - k_j|^2 / 2) from hq / hk (the
// -|.|^2 / 2 of the tile's rows / landmarks), and 0 where the row row0 + r reaches row_end or the landmark j0 + jl
// reaches m. Reads hq / hk: call it after the barrier that follows their half_sq_norms.
template <class C>
__device__ __forceinline__ void gaussian_micro_tile(float (&s)[4][4], const float* __restrict__ hq,
                                                    const float* __restrict__ hk, int64_t row0, int64_t row_end,
                                                    int64_t j0, int64_t m, int ty, int tx) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int r = ty + C::TS * i;
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int jl = tx + C::TS * j;
      const bool valid = row0 + r < row_end && j0 + jl < m;
      s[i][j] = valid ? gauss(s[i][j] + hq[r] + hk[jl]) : 0.f;
    }
  }
}

// dst[r][jl] = a[i][j] (times factor[i][j] when given) for this thread's micro-tile, dst a TILE x LD shared tile
// indexed [row][landmark].
template <class C>
__device__ __forceinline__ void store_micro_tile(const float (&a)[4][4], float* __restrict__ dst, int ty, int tx) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) dst[(ty + C::TS * i) * C::LD + tx + C::TS * j] = a[i][j];
  }
}
template <class C>
__device__ __forceinline__ void store_micro_tile(const float (&a)[4][4], const float (&factor)[4][4],
                                                 float* __restrict__ dst, int ty, int tx) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int j = 0; j < 4; ++j) dst[(ty + C::TS * i) * C::LD + tx + C::TS * j] = a[i][j] * factor[i][j];
  }
}

// acc[i][u] = 0 for a 4 x K register accumulator.
template <int K>
__device__ __forceinline__ void zero_acc(float (&acc)[4][K]) {
#pragma unroll
  for (int i = 0; i < 4; ++i) {
#pragma unroll
    for (int u = 0; u < K; ++u) acc[i][u] = 0.f;
  }
}

// out[b, r] = sum_s ws[b, s, r] for r < inner (ws: batch x splits x inner floats). Defined in soft_attention_fwd.cu.
cudaError_t launch_sum_splits(const float* ws, float* out, int64_t batch, int64_t splits, int64_t inner,
                              cudaStream_t stream);

inline dim3 reduce_grid(int64_t total) {
  const int64_t blocks = ceil_div(total > 0 ? total : 1, 256);
  return dim3(static_cast<unsigned>(blocks < (1 << 20) ? blocks : (1 << 20)));
}

}  // namespace detail
}  // namespace cuda
}  // namespace mmsoft
