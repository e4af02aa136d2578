// Forward CUDA kernels of the SOFT attention core: out = A w (per query-row tile) and out = A^T v (per landmark tile,
// reduction over N split across blocks into a float32 workspace, then summed by a second kernel: deterministic).
#include "soft_attention_tiles.cuh"

namespace mmsoft {
namespace cuda {
namespace detail {
namespace {

// One block: TILE query rows of one batch item; loops over all landmark tiles.
//   out[i, :] = sum_j A_ij w[j, :]
template <typename T, class C>
__global__ void __launch_bounds__(C::THREADS)
    matmul_fwd_kernel(const T* __restrict__ q, const float* __restrict__ k, const float* __restrict__ centre,
                      const float* __restrict__ w, T* __restrict__ out, int64_t batch, int64_t n, int64_t m, int d,
                      int c) {
  extern __shared__ float smem[];
  float* q_t = smem;                  // d x LD
  float* k_t = q_t + d * C::LD;       // d x LD
  float* w_t = k_t + d * C::LD;       // c x LD
  float* a_s = w_t + c * C::LD;       // TILE x LD: [row][landmark]
  float* hq = a_s + C::TILE * C::LD;  // TILE
  float* hk = hq + C::TILE;           // TILE
  const int tx = threadIdx.x % C::TS, ty = threadIdx.x / C::TS;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * C::TILE;

  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const T* q_b = q + b * n * d;
    const float* k_b = k + b * m * d;
    const float* centre_b = centre + b * d;
    const float* w_b = w + b * m * c;
    __syncthreads();
    load_rows_transposed<C>(q_b, n0, n, d, q_t, centre_b);
    __syncthreads();
    half_sq_norms<C>(q_t, d, hq);

    float acc[4][C::CPT];
    zero_acc(acc);

    for (int64_t j0 = 0; j0 < m; j0 += C::TILE) {
      __syncthreads();
      load_rows_transposed<C>(k_b, j0, m, d, k_t, centre_b);
      load_rows_transposed<C>(w_b, j0, m, c, w_t);
      __syncthreads();
      half_sq_norms<C>(k_t, d, hk);
      float s[4][4];
      micro_dot<C>(q_t, k_t, d, ty, tx, s);
      __syncthreads();
      gaussian_micro_tile<C>(s, hq, hk, n0, n, j0, m, ty, tx);
      store_micro_tile<C>(s, a_s, ty, tx);
      __syncthreads();
      for (int jl = 0; jl < C::TILE; ++jl) {
        float av[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) av[i] = a_s[(ty + C::TS * i) * C::LD + jl];
#pragma unroll
        for (int u = 0; u < C::CPT; ++u) {
          const int col = tx + C::TS * u;
          if (col < c) {
            const float wv = w_t[col * C::LD + jl];
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[i][u] = fmaf(av[i], wv, acc[i][u]);
          }
        }
      }
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = n0 + ty + C::TS * i;
      if (row >= n) continue;
      T* out_row = out + (b * n + row) * c;
#pragma unroll
      for (int u = 0; u < C::CPT; ++u) {
        const int col = tx + C::TS * u;
        if (col < c) out_row[col] = from_float<T>(acc[i][u]);
      }
    }
  }
}

// One block: TILE landmarks of one batch item and one slice [split * rows_per_split, ...) of the query rows.
//   ws[b, split, j, :] = sum_{i in slice} A_ij v[i, :]
template <typename T, class C>
__global__ void __launch_bounds__(C::THREADS)
    t_matmul_partial_kernel(const T* __restrict__ q, const float* __restrict__ k, const float* __restrict__ centre,
                            const T* __restrict__ v, float* __restrict__ ws, int64_t batch, int64_t n, int64_t m,
                            int d, int c, int64_t splits, int64_t rows_per_split) {
  extern __shared__ float smem[];
  float* k_t = smem;                  // d x LD
  float* q_t = k_t + d * C::LD;       // d x LD
  float* v_t = q_t + d * C::LD;       // c x LD
  float* a_s = v_t + c * C::LD;       // TILE x LD: [row][landmark]
  float* hq = a_s + C::TILE * C::LD;  // TILE
  float* hk = hq + C::TILE;           // TILE
  const int tx = threadIdx.x % C::TS, ty = threadIdx.x / C::TS;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * C::TILE;
  const int64_t split = blockIdx.y;
  const int64_t row_begin = split * rows_per_split;
  const int64_t row_end = row_begin + rows_per_split < n ? row_begin + rows_per_split : n;

  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    const T* q_b = q + b * n * d;
    const float* k_b = k + b * m * d;
    const float* centre_b = centre + b * d;
    const T* v_b = v + b * n * c;
    __syncthreads();
    load_rows_transposed<C>(k_b, j0, m, d, k_t, centre_b);
    __syncthreads();
    half_sq_norms<C>(k_t, d, hk);

    // Thread owns landmarks j0 + ty + TS*i and channels tx + TS*u.
    float acc[4][C::CPT];
    zero_acc(acc);

    for (int64_t n0 = row_begin; n0 < row_end; n0 += C::TILE) {
      __syncthreads();
      load_rows_transposed<C>(q_b, n0, row_end, d, q_t, centre_b);
      load_rows_transposed<C>(v_b, n0, row_end, c, v_t);
      __syncthreads();
      half_sq_norms<C>(q_t, d, hq);
      float s[4][4];
      micro_dot<C>(q_t, k_t, d, ty, tx, s);
      __syncthreads();
      gaussian_micro_tile<C>(s, hq, hk, n0, row_end, j0, m, ty, tx);
      store_micro_tile<C>(s, a_s, ty, tx);
      __syncthreads();
      for (int r = 0; r < C::TILE; ++r) {
        float av[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) av[i] = a_s[r * C::LD + ty + C::TS * i];
#pragma unroll
        for (int u = 0; u < C::CPT; ++u) {
          const int col = tx + C::TS * u;
          if (col < c) {
            const float vv = v_t[col * C::LD + r];
#pragma unroll
            for (int i = 0; i < 4; ++i) acc[i][u] = fmaf(av[i], vv, acc[i][u]);
          }
        }
      }
    }

    float* ws_b = ws + (b * splits + split) * m * c;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t j = j0 + ty + C::TS * i;
      if (j >= m) continue;
#pragma unroll
      for (int u = 0; u < C::CPT; ++u) {
        const int col = tx + C::TS * u;
        if (col < c) ws_b[j * c + col] = acc[i][u];
      }
    }
  }
}

__global__ void sum_splits_kernel(const float* __restrict__ ws, float* __restrict__ out, int64_t batch,
                                  int64_t splits, int64_t inner) {
  const int64_t total = batch * inner;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int64_t b = idx / inner;
    const int64_t r = idx - b * inner;
    const float* p = ws + b * splits * inner + r;
    float s = 0.f;
    for (int64_t sp = 0; sp < splits; ++sp) s += p[sp * inner];
    out[idx] = s;
  }
}

}  // namespace

cudaError_t launch_sum_splits(const float* ws, float* out, int64_t batch, int64_t splits, int64_t inner,
                              cudaStream_t stream) {
  MMSOFT_KERNEL_LAUNCH(sum_splits_kernel, reduce_grid(batch * inner), 256, 0, stream)(ws, out, batch, splits, inner);
  return cudaGetLastError();
}

}  // namespace detail

using detail::ceil_div;

int64_t reduction_splits(int64_t batch, int64_t n, int64_t m, int64_t d, int64_t c, int num_sms) {
  const int64_t tile = detail::tile_for(d, c);
  const int64_t threads = (tile / 4) * (tile / 4);
  const int64_t grid_b = batch < 65535 ? (batch > 0 ? batch : 1) : 65535;
  const int64_t col_blocks = ceil_div(m > 0 ? m : 1, tile) * grid_b;
  // Aim at about 2048 resident threads per SM worth of blocks; more splits only add reduction work.
  const int64_t target = static_cast<int64_t>(num_sms > 0 ? num_sms : 1) * (2048 / threads);
  int64_t splits = ceil_div(target, col_blocks);
  const int64_t n_tiles = ceil_div(n > 0 ? n : 1, tile);
  const int64_t max_splits = n_tiles / 4 > 1 ? n_tiles / 4 : 1;  // at least ~4 row tiles per slice
  if (splits > max_splits) splits = max_splits;
  if (splits > 65535) splits = 65535;
  return splits < 1 ? 1 : splits;
}

cudaError_t kernel_matmul_forward(ScalarKind kind, const void* q, const float* k, const float* centre, const float* w,
                                  void* out, int64_t batch, int64_t n, int64_t m, int64_t d, int64_t c,
                                  cudaStream_t stream) {
  if (batch == 0 || n == 0) return cudaSuccess;
  return detail::dispatch_kind(kind, [&](auto type_tag) {
    using T = typename decltype(type_tag)::type;
    return detail::dispatch_cfg(d, c, [&](auto cfg_tag) {
      using C = typename decltype(cfg_tag)::cfg;
      const int64_t blocks = ceil_div(n, C::TILE);
      if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
      const size_t smem = sizeof(float) * ((2 * d + c) * C::LD + C::TILE * C::LD + 2 * C::TILE);
      auto kernel = detail::matmul_fwd_kernel<T, C>;
      cudaError_t err = detail::prepare_smem(kernel, smem);
      if (err != cudaSuccess) return err;
      const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(batch < 65535 ? batch : 65535));
      MMSOFT_KERNEL_LAUNCH(kernel, grid, C::THREADS, smem, stream)
      (static_cast<const T*>(q), k, centre, w, static_cast<T*>(out), batch, n, m, static_cast<int>(d),
       static_cast<int>(c));
      return cudaGetLastError();
    });
  });
}

cudaError_t kernel_t_matmul_forward(ScalarKind kind, const void* q, const float* k, const float* centre, const void* v,
                                    float* out, float* workspace, int64_t splits, int64_t batch, int64_t n, int64_t m,
                                    int64_t d, int64_t c, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  if (n == 0) return cudaMemsetAsync(out, 0, sizeof(float) * batch * m * c, stream);
  if (splits < 1 || splits > 65535) return cudaErrorInvalidValue;
  cudaError_t err = detail::dispatch_kind(kind, [&](auto type_tag) {
    using T = typename decltype(type_tag)::type;
    return detail::dispatch_cfg(d, c, [&](auto cfg_tag) {
      using C = typename decltype(cfg_tag)::cfg;
      const int64_t m_tiles = ceil_div(m, C::TILE);
      if (m_tiles > 0x7fffffff) return cudaErrorInvalidConfiguration;
      const int64_t rows_per_split = ceil_div(ceil_div(n, C::TILE), splits) * C::TILE;
      const size_t smem = sizeof(float) * ((2 * d + c) * C::LD + C::TILE * C::LD + 2 * C::TILE);
      auto kernel = detail::t_matmul_partial_kernel<T, C>;
      cudaError_t e = detail::prepare_smem(kernel, smem);
      if (e != cudaSuccess) return e;
      const dim3 grid(static_cast<unsigned>(m_tiles), static_cast<unsigned>(splits),
                      static_cast<unsigned>(batch < 65535 ? batch : 65535));
      MMSOFT_KERNEL_LAUNCH(kernel, grid, C::THREADS, smem, stream)
      (static_cast<const T*>(q), k, centre, static_cast<const T*>(v), workspace, batch, n, m, static_cast<int>(d),
       static_cast<int>(c), splits, rows_per_split);
      return cudaGetLastError();
    });
  });
  if (err != cudaSuccess) return err;
  return detail::launch_sum_splits(workspace, out, batch, splits, m * c, stream);
}

}  // namespace cuda
}  // namespace mmsoft
