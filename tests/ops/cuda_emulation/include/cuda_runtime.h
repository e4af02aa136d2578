// CPU emulation of the small part of the CUDA runtime used by mmsoft/csrc/cuda (tests only).
// Each emulated block runs its threads as std::threads; __syncthreads() is a std::barrier; dynamic shared memory is
// one global buffer (blocks run one after another). Built by tests/ops/test_cuda_emulation.py.
#pragma once

#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <thread>
#include <vector>

#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime_api.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __shared__

struct dim3 {
  unsigned x = 1, y = 1, z = 1;
  dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

inline thread_local dim3 threadIdx, blockIdx, blockDim, gridDim;

namespace emu {

constexpr size_t kSharedBytes = 227 * 1024;       // sm_90 opt-in maximum
constexpr size_t kCanaryBytes = 4096;             // poisoned guard zone after the requested dynamic smem
constexpr size_t kDefaultSmemLimit = 48 * 1024;   // without cudaFuncSetAttribute
// Points at the kernels' `extern __shared__ float smem[]` array, defined by the harness (emulate_kernels.cpp) in the
// kernels' namespace; kSharedBytes + kCanaryBytes long.
inline unsigned char* g_shared = nullptr;
inline thread_local std::barrier<>* g_barrier = nullptr;
inline std::map<const void*, int> g_smem_optin;   // kernel -> cudaFuncAttributeMaxDynamicSharedMemorySize
inline size_t g_max_smem_seen = 0;
inline int g_failures = 0;

inline void fail(const char* what) {
  std::fprintf(stderr, "EMULATION ERROR: %s\n", what);
  ++g_failures;
}

template <typename... P>
struct Launch {
  void (*kernel)(P...);
  dim3 grid, block;
  size_t smem;

  template <typename... A>
  void operator()(A&&... args) const {
    const unsigned threads = block.x * block.y * block.z;
    if (threads == 0 || threads > 1024) return fail("block size out of range");
    if (grid.y > 65535 || grid.z > 65535 || grid.x == 0 || grid.y == 0 || grid.z == 0) return fail("bad grid");
    auto it = g_smem_optin.find(reinterpret_cast<const void*>(kernel));
    const size_t limit = it == g_smem_optin.end() ? kDefaultSmemLimit : static_cast<size_t>(it->second);
    if (smem > limit) return fail("dynamic shared memory above the limit set for the kernel");
    if (smem > 99 * 1024) return fail("dynamic shared memory above 99 KiB (sm_86 / sm_89 opt-in maximum)");
    if (smem > g_max_smem_seen) g_max_smem_seen = smem;
    for (unsigned bz = 0; bz < grid.z; ++bz) {
      for (unsigned by = 0; by < grid.y; ++by) {
        for (unsigned bx = 0; bx < grid.x; ++bx) {
          // NaN garbage: reads of shared memory nobody wrote show up in the results.
          std::memset(g_shared, 0xff, kSharedBytes + kCanaryBytes);
          std::barrier<> bar(threads);
          std::vector<std::thread> pool;
          pool.reserve(threads);
          for (unsigned t = 0; t < threads; ++t) {
            pool.emplace_back([&, t] {
              threadIdx = dim3(t % block.x, (t / block.x) % block.y, t / (block.x * block.y));
              blockIdx = dim3(bx, by, bz);
              blockDim = block;
              gridDim = grid;
              g_barrier = &bar;
              kernel(static_cast<P>(args)...);
              bar.arrive_and_drop();
            });
          }
          for (auto& th : pool) th.join();
          for (size_t i = smem; i < smem + kCanaryBytes; ++i) {
            if (g_shared[i] != 0xff) return fail("write past the requested dynamic shared memory");
          }
        }
      }
    }
  }
};

template <typename... P>
Launch<P...> make_launch(void (*kernel)(P...), dim3 grid, dim3 block, size_t smem, cudaStream_t /*stream*/) {
  return Launch<P...>{kernel, grid, block, smem};
}

}  // namespace emu

inline void __syncthreads() { emu::g_barrier->arrive_and_wait(); }

template <typename K>
inline cudaError_t cudaFuncSetAttribute(K* kernel, cudaFuncAttribute attr, int value) {
  if (attr == cudaFuncAttributeMaxDynamicSharedMemorySize) emu::g_smem_optin[reinterpret_cast<const void*>(kernel)] = value;
  return cudaSuccess;
}

#define MMSOFT_KERNEL_LAUNCH(kernel, grid, block, smem, stream) \
  ::emu::make_launch(kernel, dim3(grid), dim3(block), smem, stream)
