// CPU kernels of the fused SOFT attention core.
//
// Strategy: N is cut into row blocks; for each block the (rows x m) tile of A is built in an acc-dtype
// scratch buffer with one GEMM of augmented operands (q and k centred: q - centre, k - centre, see soft_attention.h),
//     [q, -|q|^2/2, 1] . [k, 1, -|k|^2/2]^T = -|q - k|^2 / 2,
// followed by clamp + exp (one vectorised pass, clamped_exp.h), and immediately consumed by the next GEMM(s). A is never
// stored whole: extra memory is O(B N (d + 2)) for the augmented queries (built once per call, in acc(T), like q
// itself), O(threads * rows * m) scratch and O(B * chunks * m * (d + c)) partial sums. Work is split into (batch,
// chunk of row blocks) tasks, scheduled dynamically over the threads. Reductions over N (A^T v, dk, dw) go to one
// private partial buffer per task, summed in a fixed order at the end, so results do not depend on thread
// scheduling. All arithmetic runs in acc(T) (fp32 / fp64).
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/core/grad_mode.h>
#include <c10/core/InferenceMode.h>

#include <algorithm>
#include <atomic>
#include <tuple>
#include <utility>

#include "../soft_attention.h"
#include "clamped_exp.h"

namespace mmsoft {
namespace cpu {
namespace {

// Elements of one (rows x m) tile of A: 512 KiB in fp32, so the tile and its gradient tile stay in L2, and each
// tile's handful of ATen calls (dispatch costs microseconds) is amortised over ~128 rows at m ~ 1000.
constexpr int64_t kTileElems = 128 * 1024;

struct Plan {
  int64_t batch, n, m, rows, blocks, chunks;

  Plan(int64_t batch_, int64_t n_, int64_t m_) : batch(batch_), n(n_), m(m_) {
    rows = std::clamp<int64_t>(kTileElems / std::max<int64_t>(m, 1), 16, 1024);
    rows = std::min(rows, std::max<int64_t>(n, 1));
    blocks = (n + rows - 1) / rows;
    // About 4 (batch, chunk) tasks per thread, so that threads that finish early take over work (see for_each_task).
    // The chunking depends only on the sizes and the thread count, never on the data or the scheduling.
    const int64_t threads = std::max<int64_t>(1, at::get_num_threads());
    const int64_t b = std::max<int64_t>(batch, 1);
    chunks = std::clamp<int64_t>((4 * threads + b - 1) / b, 1, std::max<int64_t>(blocks, 1));
  }
  int64_t tasks() const { return batch * chunks; }
  // Calls block(n0, rows) for each row block [n0, n0 + rows) of chunk `ch`, in order.
  template <typename Block>
  void for_each_block(int64_t ch, const Block& block) const {
    for (int64_t blk = ch * blocks / chunks; blk < (ch + 1) * blocks / chunks; ++blk) {
      const int64_t n0 = blk * rows;
      block(n0, std::min(rows, n - n0));
    }
  }
};

// Runs body(scratch, task) for every task with dynamic scheduling: each thread makes its scratch once, then pulls
// task indices from a shared counter, so a thread that is descheduled (shared machines) or slowed down delays the
// end by at most one task instead of its whole static share. Results do not depend on which thread ran a task:
// every task owns its output rows or its partial-sum slot. (at::parallel_for is an inline OpenMP construct: the
// extension must be compiled with -fopenmp, see setup.py, or this loop silently runs on one thread.)
template <typename MakeScratch, typename Body>
void for_each_task(const Plan& plan, const MakeScratch& make_scratch, const Body& body) {
  std::atomic<int64_t> next{0};
  const int64_t tasks = plan.tasks();
  const int64_t workers = std::min<int64_t>(tasks, std::max<int64_t>(1, at::get_num_threads()));
  // InferenceMode is thread-local: worker threads must see the caller's, or writing into outputs allocated by the
  // caller under torch.inference_mode() (inference tensors) fails as an "inplace update outside InferenceMode".
  const bool inference_mode = c10::InferenceMode::is_enabled();
  at::parallel_for(0, workers, 1, [&](int64_t begin, int64_t end) {
    c10::InferenceMode inference_guard(inference_mode);
    at::NoGradGuard no_grad_worker;
    auto scratch = make_scratch();
    for (int64_t w = begin; w < end; ++w) {
      for (int64_t task = next.fetch_add(1); task < tasks; task = next.fetch_add(1)) body(scratch, task);
    }
  });
}

// [k - centre, 1, -|k - centre|^2 / 2]: (B, m, d + 2), contiguous, in k's (accumulation) dtype.
at::Tensor augment_landmarks(const at::Tensor& k, const at::Tensor& centre) {
  const int64_t d = k.size(2);
  auto kaug = at::empty({k.size(0), k.size(1), d + 2}, k.options());
  auto kd = kaug.narrow(2, 0, d);
  at::sub_out(kd, k, centre);
  kaug.narrow(2, d, 1).fill_(1);
  kaug.narrow(2, d + 1, 1).copy_(kd.square().sum(2, /*keepdim=*/true).mul_(-0.5));
  return kaug;
}

// [q - centre, -|q - centre|^2 / 2, 1]: (B, N, d + 2), contiguous, in the accumulation dtype (built once per call,
// not per tile; q is widened before the subtraction, so a narrow T loses nothing to the centring).
at::Tensor augment_queries(const at::Tensor& q, const at::Tensor& centre, const at::TensorOptions& acc_opts) {
  const int64_t d = q.size(2);
  auto qaug = at::empty({q.size(0), q.size(1), d + 2}, acc_opts);
  auto qd = qaug.narrow(2, 0, d);
  qd.copy_(q);
  qd.sub_(centre);
  qaug.narrow(2, d, 1).copy_(qd.square().sum(2, /*keepdim=*/true).mul_(-0.5));
  qaug.narrow(2, d + 1, 1).fill_(1);
  return qaug;
}

// a = exp(clamp(qaug_rows kaug_b^T, floor, 0)) (rows x m): one tile of A.
void gaussian_tile(const at::Tensor& qaug_rows, const at::Tensor& kaug_b, at::Tensor& a) {
  at::mm_out(a, qaug_rows, kaug_b.t());
  // The upper clamp removes rounding noise that could make -|q - k|^2 / 2 slightly positive (as the reference does);
  // the lower one keeps exp off its slow path (exp_floor.h). One vectorised pass (clamped_exp.h).
  clamped_exp_(a);
}

// out_rows = a . rhs, where out_rows may be of a narrower dtype T than acc(T): the product then goes through the
// acc-dtype `scratch` (rows x c, undefined when no conversion is needed) and is converted on the copy.
void mm_into_rows(at::Tensor out_rows, const at::Tensor& a, const at::Tensor& rhs, const at::Tensor& scratch) {
  if (!scratch.defined()) {
    at::mm_out(out_rows, a, rhs);
    return;
  }
  auto tmp = scratch.narrow(0, 0, a.size(0));
  at::mm_out(tmp, a, rhs);
  out_rows.copy_(tmp);
}

// `t` in the accumulation dtype: itself when it already is, else one converted copy for the whole call.
at::Tensor as_acc(const at::Tensor& t, const at::TensorOptions& acc_opts) {
  return t.scalar_type() == acc_opts.dtype().toScalarType() ? t : t.to(acc_opts.dtype().toScalarType());
}

}  // namespace

at::Tensor kernel_t_matmul_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& centre,
                                   const at::Tensor& v) {
  at::NoGradGuard no_grad;
  const int64_t batch = q.size(0), n = q.size(1), m = k.size(1), c = v.size(2);
  const auto acc_opts = q.options().dtype(acc_type_of(q.scalar_type()));
  if (batch == 0 || n == 0) return at::zeros({batch, m, c}, acc_opts);
  const Plan plan(batch, n, m);
  const auto kaug = augment_landmarks(k, centre);
  const auto qaug = augment_queries(q, centre, acc_opts);
  const auto v_acc = as_acc(v, acc_opts);
  auto part = at::zeros({batch, plan.chunks, m, c}, acc_opts);

  for_each_task(
      plan, [&] { return at::empty({plan.rows, m}, acc_opts); },
      [&](at::Tensor& tile, int64_t task) {
        const int64_t b = task / plan.chunks, ch = task % plan.chunks;
        auto part_bc = part[b][ch];
        const auto qaug_b = qaug[b], v_b = v_acc[b], kaug_b = kaug[b];
        plan.for_each_block(ch, [&](int64_t n0, int64_t rows) {
          auto a = tile.narrow(0, 0, rows);
          gaussian_tile(qaug_b.narrow(0, n0, rows), kaug_b, a);
          part_bc.addmm_(a.t(), v_b.narrow(0, n0, rows));
        });
      });
  return part.sum(1);
}

at::Tensor kernel_matmul_forward(const at::Tensor& q, const at::Tensor& k, const at::Tensor& centre,
                                 const at::Tensor& w) {
  at::NoGradGuard no_grad;
  const int64_t batch = q.size(0), n = q.size(1), m = k.size(1), c = w.size(2);
  const auto acc_opts = q.options().dtype(acc_type_of(q.scalar_type()));
  auto out = at::empty({batch, n, c}, q.options());
  if (out.numel() == 0) return out;
  const Plan plan(batch, n, m);
  const auto kaug = augment_landmarks(k, centre);
  const auto qaug = augment_queries(q, centre, acc_opts);
  const bool convert = q.scalar_type() != acc_opts.dtype().toScalarType();

  struct Scratch {
    at::Tensor a, out;
  };
  for_each_task(
      plan,
      [&] {
        return Scratch{at::empty({plan.rows, m}, acc_opts),
                       convert ? at::empty({plan.rows, c}, acc_opts) : at::Tensor()};
      },
      [&](Scratch& buf, int64_t task) {
        const int64_t b = task / plan.chunks, ch = task % plan.chunks;
        const auto qaug_b = qaug[b], w_b = w[b], kaug_b = kaug[b];
        auto out_b = out[b];
        plan.for_each_block(ch, [&](int64_t n0, int64_t rows) {
          auto a = buf.a.narrow(0, 0, rows);
          gaussian_tile(qaug_b.narrow(0, n0, rows), kaug_b, a);
          mm_into_rows(out_b.narrow(0, n0, rows), a, w_b, buf.out);
        });
      });
  return out;
}

namespace {

// Shared backward. With G = A o (x y^T) (x: N-sized rows, y: landmark-sized rows):
//   dq = G k - rowsum(G) o q,   dk = G^T q - colsum(G) o k,
// and the third gradient is A y (N-sized, kTransposed: out = A^T v, x = v, y = grad_out; only its first `third_cols`
// columns, A y[:, :third_cols]) or A^T x (landmark-sized, !kTransposed: out = A w, x = grad_out, y = w).
template <bool kTransposed>
std::tuple<at::Tensor, at::Tensor, at::Tensor> backward_impl(const at::Tensor& q, const at::Tensor& k,
                                                             const at::Tensor& centre, const at::Tensor& x,
                                                             const at::Tensor& y, int64_t third_cols) {
  at::NoGradGuard no_grad;
  const int64_t batch = q.size(0), n = q.size(1), d = q.size(2), m = k.size(1), c = x.size(2);
  const auto acc_opts = q.options().dtype(acc_type_of(q.scalar_type()));
  const bool convert = q.scalar_type() != acc_opts.dtype().toScalarType();
  auto dq = at::empty_like(q);
  if (batch == 0 || n == 0) {
    auto third = kTransposed ? at::empty({batch, n, third_cols}, q.options()) : at::zeros({batch, m, c}, acc_opts);
    return {dq, at::zeros_like(k), third};
  }
  const Plan plan(batch, n, m);
  const auto kaug = augment_landmarks(k, centre);
  const auto qaug = augment_queries(q, centre, acc_opts);
  const auto x_acc = as_acc(x, acc_opts);
  // Per-task partial sums: [G^T q, -(G^T |q|^2) / 2, colsum(G)] and (if !kTransposed) A^T x.
  auto part_k = at::zeros({batch, plan.chunks, m, d + 2}, acc_opts);
  at::Tensor part_x, dx;
  if (kTransposed) {
    dx = at::empty({batch, n, third_cols}, q.options());
  } else {
    part_x = at::zeros({batch, plan.chunks, m, c}, acc_opts);
  }

  struct Scratch {
    at::Tensor a, g, dqa, dx;
  };
  for_each_task(
      plan,
      [&] {
        return Scratch{at::empty({plan.rows, m}, acc_opts),
                       at::empty({plan.rows, m}, acc_opts),
                       at::empty({plan.rows, d + 2}, acc_opts),
                       (convert && kTransposed) ? at::empty({plan.rows, third_cols}, acc_opts) : at::Tensor()};
      },
      [&](Scratch& buf, int64_t task) {
        const int64_t b = task / plan.chunks, ch = task % plan.chunks;
        const auto qaug_b = qaug[b], x_b = x_acc[b], y_b = y[b], kaug_b = kaug[b];
        auto dq_b = dq[b];
        auto part_k_bc = part_k[b][ch];
        plan.for_each_block(ch, [&](int64_t n0, int64_t rows) {
          const auto qa = qaug_b.narrow(0, n0, rows);
          auto a = buf.a.narrow(0, 0, rows);
          auto g = buf.g.narrow(0, 0, rows);
          auto dqa = buf.dqa.narrow(0, 0, rows);
          gaussian_tile(qa, kaug_b, a);
          const auto x_rows = x_b.narrow(0, n0, rows);
          at::mm_out(g, x_rows, y_b.t());
          g.mul_(a);
          // [G k, rowsum(G), *] in one GEMM thanks to the augmented landmarks.
          at::mm_out(dqa, g, kaug_b);
          auto dq_rows = dqa.narrow(1, 0, d);
          dq_rows.addcmul_(dqa.narrow(1, d, 1), qa.narrow(1, 0, d), -1);
          dq_b.narrow(0, n0, rows).copy_(dq_rows);
          part_k_bc.addmm_(g.t(), qa);
          if constexpr (kTransposed) {
            mm_into_rows(dx[b].narrow(0, n0, rows), a, y_b.narrow(1, 0, third_cols), buf.dx);
          } else {
            part_x[b][ch].addmm_(a.t(), x_rows);
          }
        });
      });
  const auto dk_aug = part_k.sum(1);
  // In centred coordinates (as dq above): G^T (q - centre) - colsum(G) o (k - centre) = G^T q - colsum(G) o k.
  auto dk = dk_aug.narrow(2, 0, d) - dk_aug.narrow(2, d + 1, 1) * kaug.narrow(2, 0, d);
  return {dq, dk, kTransposed ? dx : part_x.sum(1)};
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_t_matmul_backward(const at::Tensor& q, const at::Tensor& k,
                                                                        const at::Tensor& centre,
                                                                        const at::Tensor& v,
                                                                        const at::Tensor& grad_out) {
  return backward_impl<true>(q, k, centre, v, grad_out, grad_out.size(2));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_t_matmul_backward_cols(const at::Tensor& q, const at::Tensor& k,
                                                                             const at::Tensor& centre,
                                                                             const at::Tensor& v,
                                                                             const at::Tensor& grad_out,
                                                                             int64_t dv_cols) {
  return backward_impl<true>(q, k, centre, v, grad_out, dv_cols);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> kernel_matmul_backward(const at::Tensor& q, const at::Tensor& k,
                                                                      const at::Tensor& centre,
                                                                      const at::Tensor& w,
                                                                      const at::Tensor& grad_out) {
  return backward_impl<false>(q, k, centre, grad_out, w, /*third_cols=*/0);
}

const KernelOps kOps{&kernel_t_matmul_forward, &kernel_matmul_forward, &kernel_t_matmul_backward,
                     &kernel_matmul_backward};

}  // namespace cpu
}  // namespace mmsoft
