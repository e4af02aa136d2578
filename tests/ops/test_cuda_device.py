"""GPU-only checks of the CUDA attention core, beyond the device-parametrised tests of the other files (which run the
same cases on 'cpu' and 'cuda'): every CUDA dtype against the float64 reference at boundary sizes (the channel limit,
both tile configurations, hundreds of reduction splits, more than 65,535 batch items), determinism, a non-default
stream, bad inputs through the CUDA path, empty inputs, peak memory, the landmark solvers and the whole backbone on
the GPU (fp32 and bf16 autocast) against float64 on the CPU. Skipped without a GPU and a CUDA build of mmsoft._ext;
tools/gpu_check.sh runs them on the device."""
import pytest
import torch
from test_ext_kernels import leaf64, make_operands
from utils import TOLERANCES, landmark_solve, rel_err

from mmsoft.ops import custom_ops, ext_loader, reference, soft_attention
from mmsoft.ops.landmark_solvers import SOLVERS

pytestmark = pytest.mark.skipif(not (torch.cuda.is_available() and ext_loader.ext_available("cuda")),
                                reason="needs a GPU and the CUDA extension")
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


@pytest.fixture(autouse=True)
def full_fp32_precision():
    """cuDNN convolutions default to TF32 on Ampere and later (10-bit mantissa): compare in true fp32."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved

BOUNDARY_SIZES = [  # (B, N, m, d, c)
    (1, 5, 3, 128, 128),       # the channel limit; 32-row tiles
    (2, 77, 33, 33, 1),        # just past the 64-row tile configuration (d = 33), a single value channel
    (1, 65553, 16, 32, 32),    # N far above m: the reductions over N split into hundreds of slices
    (70000, 3, 2, 4, 4),       # more batch items than a grid dimension holds (65,535): grid-stride batch loop
    (2, 300, 1000, 64, 48),    # many landmark tiles, none full at the end
]


def _check_products(size, dtype, seed=0):
    """Both fused products, forward and backward, on CUDA against the float64 reference on the CPU."""
    q, k, v, w = make_operands(*size, dtype, "cuda", seed=seed)
    tol = TOLERANCES[dtype]
    for op, ref_op, x in ((custom_ops.kernel_t_matmul, reference.kernel_t_matmul, v),
                          (custom_ops.kernel_matmul, reference.kernel_matmul, w)):
        leaves = [t.clone().requires_grad_() for t in (q, k, x)]
        out = op(*leaves)
        leaves64 = leaf64(q, k, x)
        ref = ref_op(*leaves64)
        out_tol = TOLERANCES[out.dtype] if out.dtype != dtype else tol  # A^T v comes out in float32
        assert rel_err(out, ref) < out_tol, (op.__name__, "out")
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1)).to("cuda", out.dtype)
        out.backward(grad)
        ref.backward(grad.double().cpu())
        for got, want, name in zip((t.grad for t in leaves), (t.grad for t in leaves64), "qkx"):
            assert got.dtype == leaves["qkx".index(name)].dtype
            assert rel_err(got, want) < tol, (op.__name__, f"d{name}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", BOUNDARY_SIZES, ids=lambda s: "B{}-N{}-m{}-d{}-c{}".format(*s))
def test_cuda_products_match_float64_at_boundary_sizes(dtype, size):
    _check_products(size, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_cuda_soft_attention_matches_float64(dtype):
    """The whole op (Newton in fp32 on the GPU, fused products in dtype) against float64 on the CPU, values and
    gradients; landmarks far apart, so that 30 Newton steps converge and the comparison measures rounding only."""
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 3, 333, 32, generator=gen, dtype=torch.float64) * 0.4
    k = torch.randn(2, 3, 21, 32, generator=gen, dtype=torch.float64) * 0.6
    v = torch.randn(2, 3, 333, 32, generator=gen, dtype=torch.float64)
    g = torch.randn(2, 3, 333, 32, generator=gen, dtype=torch.float64)
    leaves = [t.to("cuda", dtype if i != 1 else torch.float32).requires_grad_() for i, t in enumerate((q, k, v))]
    out = soft_attention(*leaves, num_iters=30, impl="ext")
    out.backward(g.to("cuda", dtype))
    # float64 reference on the same (rounded) inputs and output gradient
    leaves64 = [t.detach().double().cpu().requires_grad_() for t in leaves]
    ref = soft_attention(*leaves64, num_iters=30, impl="reference")
    ref.backward(g.to(dtype).double())
    # fp32 Newton on an m = 21 kernel adds ~1e-6; the rest is the dtype's rounding.
    tol = max(TOLERANCES[dtype], 1e-4)
    assert out.dtype == dtype and rel_err(out, ref) < tol
    for got, want, name in zip((t.grad for t in leaves), (t.grad for t in leaves64), "qkv"):
        assert rel_err(got, want) < tol, name


def test_cuda_kernels_are_deterministic():
    """The fused kernels sum their split reductions in a fixed order (no atomics): two runs agree bit for bit,
    gradients included."""
    q, k, v, w = make_operands(2, 20000, 64, 32, 32, torch.float32, "cuda", seed=5)
    for op, x in ((custom_ops.kernel_t_matmul, v), (custom_ops.kernel_matmul, w)):
        runs = []
        for _ in range(2):
            leaves = [t.clone().requires_grad_() for t in (q, k, x)]
            out = op(*leaves)
            out.square().sum().backward()
            runs.append([out.detach(), *(t.grad for t in leaves)])
        for a, b in zip(*runs):
            assert torch.equal(a, b), op.__name__


def test_cuda_kernels_run_on_the_current_stream():
    """Inputs produced on a side stream and consumed there: the kernels must be ordered after them (they launch on
    torch's current stream), so the result equals the one computed on the default stream."""
    q, k, v, _ = make_operands(2, 8192, 128, 32, 32, torch.float32, "cuda", seed=6)
    expected = soft_attention(q, k, v, impl="ext")
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        # a slow producer right before the consumer: a kernel on another stream would read unfinished inputs
        big = torch.randn(4096, 4096, device="cuda")
        for _ in range(4):
            big = big @ big / 64.0
        q2 = q + 0.0 * big.sum()
        out = soft_attention(q2, k, v, impl="ext")
    torch.cuda.current_stream().wait_stream(side)
    # a race reads garbage; same values up to cuBLAS' choice of algorithm is the correct result
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case, error, pattern", [
    ("k_on_cpu", RuntimeError, "all operands must be on one device"),
    ("k_half", RuntimeError, r"k must be Float"),
    ("v_not_contiguous", RuntimeError, r"must be contiguous"),
    ("v_wrong_n", RuntimeError, r"v must have shape \(B, N, c\)"),
    ("q_float64", RuntimeError, "float64"),
    ("d_129", RuntimeError, "up to 128"),
])
def test_cuda_bad_inputs_raise_clear_errors(case, error, pattern):
    ext = ext_loader.get_ext("cuda")
    q = torch.randn(2, 10, 8, device="cuda", dtype=torch.float16)
    k = torch.randn(2, 4, 8, device="cuda")
    v = torch.randn(2, 10, 3, device="cuda", dtype=torch.float16)
    if case == "k_on_cpu":
        k = k.cpu()
    elif case == "k_half":
        k = k.half()
    elif case == "v_not_contiguous":
        v = torch.randn(2, 3, 10, device="cuda", dtype=torch.float16).transpose(1, 2)
    elif case == "v_wrong_n":
        v = v[:, :9].contiguous()
    elif case == "q_float64":
        q, k, v = q.double(), k.double(), v.double()
    elif case == "d_129":
        q, k = torch.randn(2, 10, 129, device="cuda", dtype=torch.float16), torch.randn(2, 4, 129, device="cuda")
    with pytest.raises(error, match=pattern):
        ext.kernel_t_matmul_forward(q, k, v)
    torch.cuda.synchronize()  # a rejected call leaves no pending CUDA error behind


def test_cuda_soft_attention_input_checks_and_fallbacks():
    q = torch.randn(1, 2, 16, 8, device="cuda")
    k = torch.randn(1, 2, 4, 8, device="cuda")
    with pytest.raises(ValueError, match="all inputs must be on one device"):
        soft_attention(q, k.cpu(), q)
    wide_q, wide_k = torch.randn(1, 1, 16, 130, device="cuda") * 0.1, torch.randn(1, 1, 4, 130, device="cuda") * 0.1
    with pytest.raises(RuntimeError, match="up to 128"):
        soft_attention(wide_q, wide_k, wide_q, impl="ext")
    # 'auto' runs what the extension cannot (head dim 130, float64) with the reference, on the GPU
    auto = soft_attention(wide_q, wide_k, wide_q, impl="auto")
    assert auto.is_cuda and torch.allclose(auto, soft_attention(wide_q, wide_k, wide_q, impl="reference"),
                                           rtol=1e-6, atol=0)
    auto64 = soft_attention(q.double(), k.double(), q.double(), impl="auto")
    assert auto64.is_cuda and auto64.dtype == torch.float64


def test_cuda_empty_inputs():
    k = torch.randn(2, 3, 8, device="cuda")
    q0, v0 = torch.randn(2, 0, 8, device="cuda"), torch.randn(2, 0, 5, device="cuda")
    assert torch.equal(custom_ops.kernel_t_matmul(q0, k, v0), torch.zeros(2, 3, 5, device="cuda"))
    assert custom_ops.kernel_matmul(q0, k, torch.randn(2, 3, 5, device="cuda")).shape == (2, 0, 5)
    q = torch.randn(0, 2, 40, 16, device="cuda")
    assert soft_attention(q, torch.randn(0, 2, 4, 16, device="cuda"), q, impl="ext").shape == (0, 2, 40, 16)


def _peak_bytes(fn) -> int:
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def test_cuda_ext_peak_memory_is_far_below_one_n_by_m_matrix():
    """Forward + backward of the fused kernels never holds A (N x m): O(N d + m^2) memory on the GPU (here about
    6 N-sized tensors of 8 MiB and a few m x m ones of 8 MiB, against 512 MiB for one A)."""
    bh, n, m, d = 2, 65536, 1024, 16
    q, k, v, _ = make_operands(bh, n, m, d, d, torch.float32, "cuda", seed=7)
    grad = torch.randn_like(v)
    n_by_m = bh * n * m * 4

    def run(impl):
        leaves = [t.clone().requires_grad_() for t in (q, k, v)]
        return lambda: soft_attention(*leaves, impl=impl).backward(grad)

    ext, ref = _peak_bytes(run("ext")), _peak_bytes(run("reference"))
    assert ref >= n_by_m
    assert ext < n_by_m / 4 and ext * 10 < ref


def _spread_landmarks(batch, m, d):
    return torch.randn(batch, m, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2.0


@pytest.mark.parametrize("solver", SOLVERS)
def test_cuda_landmark_solvers_match_float64(solver):
    """Each solver on the GPU (cuBLAS / cuSOLVER) against the same solver in float64 on the CPU, values and the
    gradients through the attention."""
    k = _spread_landmarks(3, 48, 8)
    x = torch.randn(3, 48, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    got = landmark_solve(k.float().cuda(), x.float().cuda(), num_iters=30, solver=solver)
    assert got.is_cuda and rel_err(got, landmark_solve(k, x, num_iters=30, solver=solver)) < 1e-4
    q = torch.randn(3, 200, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 0.5
    v = torch.randn(3, 200, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    grads = {}
    for device, dtype in (("cuda", torch.float32), ("cpu", torch.float64)):
        leaves = [t.to(device, dtype).requires_grad_() for t in (q, k, v)]
        out = soft_attention(*leaves, num_iters=30, solver=solver)
        out.square().sum().backward()
        grads[device] = [out, *(t.grad for t in leaves)]
    for got, want, name in zip(grads["cuda"], grads["cpu"], ("out", "dq", "dk", "dv")):
        assert rel_err(got, want) < 1e-3, name


def _tiny_backbone():
    from mmsoft.models import SOFT

    torch.manual_seed(0)
    model = SOFT(arch="tiny", drop_path_rate=0.0)  # no random stochastic depth: the two copies must match
    model.init_weights()
    return model


def test_cuda_backbone_matches_float64_cpu():
    """SOFT-Tiny-Norm on the GPU (fused kernels, fp32; and under bf16 autocast) against a float64 copy on the CPU:
    outputs, and the weight gradients of a forward + backward in train mode."""
    model = _tiny_backbone()
    x = torch.randn(2, 3, 96, 128, generator=torch.Generator().manual_seed(1))
    ref_model = _tiny_backbone().double()
    gpu_model = model.cuda()
    with torch.no_grad():
        ref = ref_model.eval()(x.double())
        out = gpu_model.eval()(x.cuda())
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out_bf16 = gpu_model(x.cuda())
    for a, b, a16 in zip(out, ref, out_bf16):
        assert a.is_cuda and rel_err(a, b) < 1e-4
        assert rel_err(a16.float(), b) < 5e-2
    ref_model.train()(x.double())[-1].square().mean().backward()
    gpu_model.train()(x.cuda())[-1].square().mean().backward()
    # All weight gradients as one vector: some are zero up to rounding (biases in front of a LayerNorm), so a
    # per-tensor relative error would compare noise with noise.
    got = torch.cat([p.grad.flatten().double().cpu() for p in gpu_model.parameters() if p.grad is not None])
    want = torch.cat([p.grad.flatten() for p in ref_model.parameters() if p.grad is not None])
    assert got.shape == want.shape and rel_err(got, want) < 1e-3


def test_cuda_torch_compile_fullgraph():
    """The custom ops' fake kernels also serve CUDA tensors: one graph, the eager values."""
    q, k, v = (t.requires_grad_() for t in make_operands(2, 64, 8, 32, 32, torch.float32, "cuda", seed=8)[:3])
    compiled = torch.compile(lambda q, k, v: soft_attention(q, k, v, impl="ext"), backend="aot_eager",
                             fullgraph=True)
    out = compiled(q, k, v)
    eager = soft_attention(q, k, v, impl="ext")
    assert torch.allclose(out, eager, rtol=1e-5, atol=1e-6)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    eager_grads = torch.autograd.grad(eager.square().sum(), (q, k, v))
    for got, want in zip(grads, eager_grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)
