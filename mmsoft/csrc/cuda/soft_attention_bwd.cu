// Backward CUDA kernels of the SOFT attention core. With G = A o (x y^T) (x: N-sized rows, y: landmark-sized rows):
//   rows pass (one block per TILE query rows):   dq = G k - rowsum(G) o q   [and A y]
//   cols pass (one block per TILE landmarks and one slice of N, partial sums in a float32 workspace, then reduced):
//                                                dk = G^T q - colsum(G) o k [and A^T x]
// out = A w   uses x = grad_out, y = w        (dq, dk, dw = A^T x)
// out = A^T v uses x = v,        y = grad_out (dq, dk, dv = A y)
// A and G are recomputed per tile in both passes and never stored in global memory.
#include "soft_attention_tiles.cuh"

namespace mmsoft {
namespace cuda {
namespace detail {
namespace {

template <typename T, class C, bool kWithAy>
__global__ void __launch_bounds__(C::THREADS)
    grad_rows_kernel(const T* __restrict__ q, const float* __restrict__ k, const float* __restrict__ centre,
                     const T* __restrict__ x, const float* __restrict__ y, T* __restrict__ dq, T* __restrict__ ay,
                     int64_t batch, int64_t n, int64_t m, int d, int c) {
  extern __shared__ float smem[];
  float* q_t = smem;                  // d x LD (query rows of this block)
  float* x_t = q_t + d * C::LD;       // c x LD
  float* k_t = x_t + c * C::LD;       // d x LD (current landmark tile)
  float* y_t = k_t + d * C::LD;       // c x LD
  float* g_s = y_t + c * C::LD;       // TILE x LD: G[row][landmark]
  float* hq = g_s + C::TILE * C::LD;  // TILE
  float* hk = hq + C::TILE;           // TILE
  float* a_s = hk + C::TILE;          // TILE x LD: A[row][landmark] (only with kWithAy)
  const int tx = threadIdx.x % C::TS, ty = threadIdx.x / C::TS;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * C::TILE;
  constexpr int kAyCols = kWithAy ? C::CPT : 1;

  for (int64_t b = blockIdx.y; b < batch; b += gridDim.y) {
    const T* q_b = q + b * n * d;
    const T* x_b = x + b * n * c;
    const float* k_b = k + b * m * d;
    const float* centre_b = centre + b * d;
    const float* y_b = y + b * m * c;
    __syncthreads();
    load_rows_transposed<C>(q_b, n0, n, d, q_t, centre_b);
    load_rows_transposed<C>(x_b, n0, n, c, x_t);
    __syncthreads();
    half_sq_norms<C>(q_t, d, hq);

    float dq_acc[4][C::CPT], ay_acc[4][kAyCols], gsum[4];
    zero_acc(dq_acc);
    zero_acc(ay_acc);
#pragma unroll
    for (int i = 0; i < 4; ++i) gsum[i] = 0.f;

    for (int64_t j0 = 0; j0 < m; j0 += C::TILE) {
      __syncthreads();
      load_rows_transposed<C>(k_b, j0, m, d, k_t, centre_b);
      load_rows_transposed<C>(y_b, j0, m, c, y_t);
      __syncthreads();
      half_sq_norms<C>(k_t, d, hk);
      float s[4][4], t[4][4];
      micro_dot<C>(q_t, k_t, d, ty, tx, s);
      micro_dot<C>(x_t, y_t, c, ty, tx, t);
      __syncthreads();
      gaussian_micro_tile<C>(s, hq, hk, n0, n, j0, m, ty, tx);
      store_micro_tile<C>(s, t, g_s, ty, tx);  // G = A o (x y^T)
      if (kWithAy) store_micro_tile<C>(s, a_s, ty, tx);
      __syncthreads();
      for (int jl = 0; jl < C::TILE; ++jl) {
        float gv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          gv[i] = g_s[(ty + C::TS * i) * C::LD + jl];
          gsum[i] += gv[i];
        }
#pragma unroll
        for (int u = 0; u < C::CPT; ++u) {
          const int e = tx + C::TS * u;
          if (e < d) {
            const float kv = k_t[e * C::LD + jl];
#pragma unroll
            for (int i = 0; i < 4; ++i) dq_acc[i][u] = fmaf(gv[i], kv, dq_acc[i][u]);
          }
        }
        if (kWithAy) {
          float av[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) av[i] = a_s[(ty + C::TS * i) * C::LD + jl];
#pragma unroll
          for (int u = 0; u < kAyCols; ++u) {
            const int col = tx + C::TS * u;
            if (col < c) {
              const float yv = y_t[col * C::LD + jl];
#pragma unroll
              for (int i = 0; i < 4; ++i) ay_acc[i][u] = fmaf(av[i], yv, ay_acc[i][u]);
            }
          }
        }
      }
    }

#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int r = ty + C::TS * i;
      const int64_t row = n0 + r;
      if (row >= n) continue;
      T* dq_row = dq + (b * n + row) * d;
#pragma unroll
      for (int u = 0; u < C::CPT; ++u) {
        const int e = tx + C::TS * u;
        if (e < d) dq_row[e] = from_float<T>(dq_acc[i][u] - gsum[i] * q_t[e * C::LD + r]);
      }
      if (kWithAy) {
        T* ay_row = ay + (b * n + row) * c;
#pragma unroll
        for (int u = 0; u < kAyCols; ++u) {
          const int col = tx + C::TS * u;
          if (col < c) ay_row[col] = from_float<T>(ay_acc[i][u]);
        }
      }
    }
  }
}

// Workspace layout (float32): dk part [splits*B, m, d], colsum part [splits*B, m], A^T x part [splits*B, m, c].
template <typename T, class C, bool kWithAtx>
__global__ void __launch_bounds__(C::THREADS)
    grad_cols_kernel(const T* __restrict__ q, const float* __restrict__ k, const float* __restrict__ centre,
                     const T* __restrict__ x, const float* __restrict__ y, float* __restrict__ ws, int64_t batch,
                     int64_t n, int64_t m, int d, int c, int64_t splits, int64_t rows_per_split) {
  extern __shared__ float smem[];
  float* k_t = smem;                  // d x LD (landmarks of this block)
  float* y_t = k_t + d * C::LD;       // c x LD
  float* q_t = y_t + c * C::LD;       // d x LD (current query-row tile)
  float* x_t = q_t + d * C::LD;       // c x LD
  float* g_s = x_t + c * C::LD;       // TILE x LD: G[row][landmark]
  float* hq = g_s + C::TILE * C::LD;  // TILE
  float* hk = hq + C::TILE;           // TILE
  float* a_s = hk + C::TILE;          // TILE x LD (only with kWithAtx)
  const int tx = threadIdx.x % C::TS, ty = threadIdx.x / C::TS;
  const int64_t j0 = static_cast<int64_t>(blockIdx.x) * C::TILE;
  const int64_t split = blockIdx.y;
  const int64_t row_begin = split * rows_per_split;
  const int64_t row_end = row_begin + rows_per_split < n ? row_begin + rows_per_split : n;
  constexpr int kAtxCols = kWithAtx ? C::CPT : 1;
  float* ws_dk = ws;
  float* ws_g = ws_dk + splits * batch * m * d;
  float* ws_atx = ws_g + splits * batch * m;

  for (int64_t b = blockIdx.z; b < batch; b += gridDim.z) {
    const T* q_b = q + b * n * d;
    const T* x_b = x + b * n * c;
    const float* k_b = k + b * m * d;
    const float* centre_b = centre + b * d;
    const float* y_b = y + b * m * c;
    __syncthreads();
    load_rows_transposed<C>(k_b, j0, m, d, k_t, centre_b);
    load_rows_transposed<C>(y_b, j0, m, c, y_t);
    __syncthreads();
    half_sq_norms<C>(k_t, d, hk);

    // Thread owns landmarks j0 + ty + TS*i and channels tx + TS*u.
    float dk_acc[4][C::CPT], atx_acc[4][kAtxCols], gcol[4];
    zero_acc(dk_acc);
    zero_acc(atx_acc);
#pragma unroll
    for (int i = 0; i < 4; ++i) gcol[i] = 0.f;

    for (int64_t n0 = row_begin; n0 < row_end; n0 += C::TILE) {
      __syncthreads();
      load_rows_transposed<C>(q_b, n0, row_end, d, q_t, centre_b);
      load_rows_transposed<C>(x_b, n0, row_end, c, x_t);
      __syncthreads();
      half_sq_norms<C>(q_t, d, hq);
      float s[4][4], t[4][4];
      micro_dot<C>(q_t, k_t, d, ty, tx, s);
      micro_dot<C>(x_t, y_t, c, ty, tx, t);
      __syncthreads();
      gaussian_micro_tile<C>(s, hq, hk, n0, row_end, j0, m, ty, tx);
      store_micro_tile<C>(s, t, g_s, ty, tx);  // G = A o (x y^T)
      if (kWithAtx) store_micro_tile<C>(s, a_s, ty, tx);
      __syncthreads();
      for (int r = 0; r < C::TILE; ++r) {
        float gv[4];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          gv[i] = g_s[r * C::LD + ty + C::TS * i];
          gcol[i] += gv[i];
        }
#pragma unroll
        for (int u = 0; u < C::CPT; ++u) {
          const int e = tx + C::TS * u;
          if (e < d) {
            const float qv = q_t[e * C::LD + r];
#pragma unroll
            for (int i = 0; i < 4; ++i) dk_acc[i][u] = fmaf(gv[i], qv, dk_acc[i][u]);
          }
        }
        if (kWithAtx) {
          float av[4];
#pragma unroll
          for (int i = 0; i < 4; ++i) av[i] = a_s[r * C::LD + ty + C::TS * i];
#pragma unroll
          for (int u = 0; u < kAtxCols; ++u) {
            const int col = tx + C::TS * u;
            if (col < c) {
              const float xv = x_t[col * C::LD + r];
#pragma unroll
              for (int i = 0; i < 4; ++i) atx_acc[i][u] = fmaf(av[i], xv, atx_acc[i][u]);
            }
          }
        }
      }
    }

    const int64_t slot = (b * splits + split) * m;  // first landmark row of this (batch, split) slice
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t j = j0 + ty + C::TS * i;
      if (j >= m) continue;
      if (tx == 0) ws_g[slot + j] = gcol[i];
#pragma unroll
      for (int u = 0; u < C::CPT; ++u) {
        const int e = tx + C::TS * u;
        if (e < d) ws_dk[(slot + j) * d + e] = dk_acc[i][u];
      }
      if (kWithAtx) {
#pragma unroll
        for (int u = 0; u < kAtxCols; ++u) {
          const int col = tx + C::TS * u;
          if (col < c) ws_atx[(slot + j) * c + col] = atx_acc[i][u];
        }
      }
    }
  }
}

// dk[b, j, e] = sum_s ws_dk[b, s, j, e] - (sum_s ws_g[b, s, j]) * (k[b, j, e] - centre[b, e]) (the partial sums hold
// G^T (q - centre); the centre cancels: G^T q - colsum(G) o k).
__global__ void dk_reduce_kernel(const float* __restrict__ ws_dk, const float* __restrict__ ws_g,
                                 const float* __restrict__ k, const float* __restrict__ centre, float* __restrict__ dk,
                                 int64_t batch, int64_t splits, int64_t m, int64_t d) {
  const int64_t inner = m * d;
  const int64_t total = batch * inner;
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  for (int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; idx < total; idx += stride) {
    const int64_t b = idx / inner;
    const int64_t rem = idx - b * inner;
    const int64_t j = rem / d;
    const int64_t e = rem - j * d;
    float s = 0.f, g = 0.f;
    for (int64_t sp = 0; sp < splits; ++sp) {
      s += ws_dk[(b * splits + sp) * inner + rem];
      g += ws_g[(b * splits + sp) * m + j];
    }
    dk[idx] = s - g * (k[idx] - centre[b * d + e]);
  }
}

template <bool kWithAy>
cudaError_t launch_grad_rows(ScalarKind kind, const void* q, const float* k, const float* centre, const void* x,
                             const float* y, void* dq, void* ay, int64_t batch, int64_t n, int64_t m, int64_t d,
                             int64_t c, cudaStream_t stream) {
  return dispatch_kind(kind, [&](auto type_tag) {
    using T = typename decltype(type_tag)::type;
    return dispatch_cfg(d, c, [&](auto cfg_tag) {
      using C = typename decltype(cfg_tag)::cfg;
      const int64_t blocks = ceil_div(n, C::TILE);
      if (blocks > 0x7fffffff) return cudaErrorInvalidConfiguration;
      const size_t smem =
          sizeof(float) * ((2 * d + 2 * c) * C::LD + (kWithAy ? 2 : 1) * C::TILE * C::LD + 2 * C::TILE);
      auto kernel = grad_rows_kernel<T, C, kWithAy>;
      cudaError_t err = prepare_smem(kernel, smem);
      if (err != cudaSuccess) return err;
      const dim3 grid(static_cast<unsigned>(blocks), static_cast<unsigned>(batch < 65535 ? batch : 65535));
      MMSOFT_KERNEL_LAUNCH(kernel, grid, C::THREADS, smem, stream)
      (static_cast<const T*>(q), k, centre, static_cast<const T*>(x), y, static_cast<T*>(dq), static_cast<T*>(ay),
       batch, n, m, static_cast<int>(d), static_cast<int>(c));
      return cudaGetLastError();
    });
  });
}

template <bool kWithAtx>
cudaError_t launch_grad_cols(ScalarKind kind, const void* q, const float* k, const float* centre, const void* x,
                             const float* y, float* workspace, int64_t splits, int64_t batch, int64_t n, int64_t m,
                             int64_t d, int64_t c, cudaStream_t stream) {
  return dispatch_kind(kind, [&](auto type_tag) {
    using T = typename decltype(type_tag)::type;
    return dispatch_cfg(d, c, [&](auto cfg_tag) {
      using C = typename decltype(cfg_tag)::cfg;
      const int64_t m_tiles = ceil_div(m, C::TILE);
      if (m_tiles > 0x7fffffff) return cudaErrorInvalidConfiguration;
      const int64_t rows_per_split = ceil_div(ceil_div(n, C::TILE), splits) * C::TILE;
      const size_t smem =
          sizeof(float) * ((2 * d + 2 * c) * C::LD + (kWithAtx ? 2 : 1) * C::TILE * C::LD + 2 * C::TILE);
      auto kernel = grad_cols_kernel<T, C, kWithAtx>;
      cudaError_t err = prepare_smem(kernel, smem);
      if (err != cudaSuccess) return err;
      const dim3 grid(static_cast<unsigned>(m_tiles), static_cast<unsigned>(splits),
                      static_cast<unsigned>(batch < 65535 ? batch : 65535));
      MMSOFT_KERNEL_LAUNCH(kernel, grid, C::THREADS, smem, stream)
      (static_cast<const T*>(q), k, centre, static_cast<const T*>(x), y, workspace, batch, n, m, static_cast<int>(d),
       static_cast<int>(c), splits, rows_per_split);
      return cudaGetLastError();
    });
  });
}

}  // namespace
}  // namespace detail

cudaError_t kernel_grad_rows(ScalarKind kind, const void* q, const float* k, const float* centre, const void* x,
                             const float* y, void* dq, void* ay, int64_t batch, int64_t n, int64_t m, int64_t d,
                             int64_t c, cudaStream_t stream) {
  if (batch == 0 || n == 0) return cudaSuccess;
  if (ay != nullptr) {
    return detail::launch_grad_rows<true>(kind, q, k, centre, x, y, dq, ay, batch, n, m, d, c, stream);
  }
  return detail::launch_grad_rows<false>(kind, q, k, centre, x, y, dq, nullptr, batch, n, m, d, c, stream);
}

cudaError_t kernel_grad_cols(ScalarKind kind, const void* q, const float* k, const float* centre, const void* x,
                             const float* y, float* dk, float* atx, float* workspace, int64_t splits, int64_t batch,
                             int64_t n, int64_t m, int64_t d, int64_t c, cudaStream_t stream) {
  if (batch == 0) return cudaSuccess;
  if (n == 0) {
    cudaError_t err = cudaMemsetAsync(dk, 0, sizeof(float) * batch * m * d, stream);
    if (err == cudaSuccess && atx != nullptr) err = cudaMemsetAsync(atx, 0, sizeof(float) * batch * m * c, stream);
    return err;
  }
  if (splits < 1 || splits > 65535) return cudaErrorInvalidValue;
  cudaError_t err = atx != nullptr ? detail::launch_grad_cols<true>(kind, q, k, centre, x, y, workspace, splits, batch,
                                                                    n, m, d, c, stream)
                                   : detail::launch_grad_cols<false>(kind, q, k, centre, x, y, workspace, splits, batch,
                                                                     n, m, d, c, stream);
  if (err != cudaSuccess) return err;
  const float* ws_dk = workspace;
  const float* ws_g = ws_dk + splits * batch * m * d;
  const float* ws_atx = ws_g + splits * batch * m;
  MMSOFT_KERNEL_LAUNCH(detail::dk_reduce_kernel, detail::reduce_grid(batch * m * d), 256, 0, stream)
  (ws_dk, ws_g, k, centre, dk, batch, splits, m, d);
  err = cudaGetLastError();
  if (err != cudaSuccess || atx == nullptr) return err;
  return detail::launch_sum_splits(ws_atx, atx, batch, splits, m * c, stream);
}

}  // namespace cuda
}  // namespace mmsoft
