"""The fused kernels of mmsoft._ext (custom ops mmsoft::kernel_t_matmul / mmsoft::kernel_matmul) against the
PyTorch reference: per dtype, odd sizes, gradients, gradcheck, non-contiguous inputs, memory and input checks."""
import math

import pytest
import torch
from utils import TOLERANCES, make_inputs, rel_err

from mmsoft.ops import custom_ops, ext_loader, reference
from mmsoft.ops.precision import acc_dtype, exp_floor

DTYPES = [torch.float32, torch.float16, torch.bfloat16, torch.float64]


def make_operands(batch: int, n: int, m: int, d: int, c: int, dtype: torch.dtype, device: str, seed: int = 0):
    """The shared inputs in the custom ops' convention: q (B, N, d) and x (B, N, c) in dtype, k (B, m, d) and
    y (B, m, c) in the accumulation dtype; q and k scaled by d^-1/2, so |q - k|^2 ~ 2 (A neither vanishes nor
    saturates)."""
    q, k, x = make_inputs(batch, None, n, m, d, c, dtype=torch.float64, seed=seed, q_scale=d ** -0.5, k_scale=d ** -0.5)
    y = make_inputs(batch, None, m, 1, 1, c, dtype=torch.float64, seed=seed + 1)[2]  # v of m tokens: (B, m, c)
    acc = acc_dtype(dtype)
    return q.to(device, dtype), k.to(device, acc), x.to(device, dtype), y.to(device, acc)


@pytest.mark.skipif(not ext_loader.ext_available("cpu"), reason="mmsoft._ext is not built")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_accumulation_dtype_is_one_rule_in_python_and_cpp(dtype):
    """The C++ mapping (acc_type_of, exported as _ext.acc_dtype) and mmsoft.ops.precision.acc_dtype agree."""
    assert ext_loader.get_ext().acc_dtype(dtype) == acc_dtype(dtype)


@pytest.mark.skipif(not ext_loader.ext_available("cpu"), reason="mmsoft._ext is not built")
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_exponent_floor_is_one_rule_in_python_and_cpp(dtype):
    """mmsoft/csrc/exp_floor.h (exported as _ext.exp_floor) and mmsoft.ops.precision.exp_floor agree, and the floor
    is the smallest integer above log(smallest normal) of the accumulation dtype."""
    floor = exp_floor(dtype)
    assert ext_loader.get_ext().exp_floor(dtype) == floor
    tiny = torch.finfo(acc_dtype(dtype)).tiny
    assert math.exp(floor) >= tiny > math.exp(floor - 1)



def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return next((set(line.split(":", 1)[1].split()) for line in f if line.startswith("flags")), set())
    except OSError:
        return set()


EXP_LOOPS = ["avx512", "avx2", "aten"]  # widest first, as clamped_exp.cpp chooses


@pytest.mark.skipif(not ext_loader.ext_available("cpu"), reason="mmsoft._ext is not built")
@pytest.mark.parametrize("loop", ["auto", *EXP_LOOPS])
def test_cpu_entry_exp_is_within_one_ulp_of_the_exact_value(loop):
    """The CPU tiles' own exp(clamp(x, floor, 0)) (vector loops, not ATen's exp), each loop this CPU can run: within
    1.05 ulp of the float64 value over the whole clamped range and beyond it (vector body and scalar tail: an odd
    length), NaN stays NaN, +inf gives exp(0) = 1 and -inf the floor, as ATen's clamp_ + exp_ do."""
    ext = ext_loader.get_ext()
    detected = ext.build_info()["cpu_exp"]
    if loop != "auto" and EXP_LOOPS.index(loop) < EXP_LOOPS.index(detected):
        with pytest.raises(RuntimeError, match="this CPU cannot run"):
            ext.clamped_exp(torch.zeros(4), loop)
        return
    x = torch.cat([torch.linspace(-95.0, 3.0, 2_000_003), torch.tensor([math.nan, math.inf, -math.inf, -0.0])])
    y = ext.clamped_exp(x, loop)
    exact = torch.exp(x.double().clamp(exp_floor(torch.float32), 0.0))
    ulp = (torch.nextafter(exact.float(), torch.tensor(math.inf)).double() - exact.float().double())
    finite = torch.isfinite(x)
    assert ((y.double() - exact).abs() / ulp)[finite].max() <= 1.05
    assert torch.isnan(y[-4]) and y[-3] == 1.0 and y[-1] == 1.0
    assert y[-2] == torch.tensor(math.exp(exp_floor(torch.float32)), dtype=torch.float32)
    x64 = torch.linspace(-800.0, 1.0, 10_001, dtype=torch.float64)
    assert torch.equal(ext.clamped_exp(x64, loop), torch.exp(x64.clamp(exp_floor(torch.float64), 0.0)))


@pytest.mark.skipif(not ext_loader.ext_available("cpu"), reason="mmsoft._ext is not built")
def test_cpu_entry_exp_uses_the_widest_vector_loop_the_cpu_has():
    """build_info()['cpu_exp'] follows the CPU's flags (/proc/cpuinfo): AVX-512F, else AVX2 + FMA, else ATen."""
    flags = _cpu_flags()
    if not flags:
        pytest.skip("no /proc/cpuinfo flags on this machine")
    expected = "avx512" if "avx512f" in flags else "avx2" if {"avx2", "fma"} <= flags else "aten"
    assert ext_loader.get_ext().build_info()["cpu_exp"] == expected


@pytest.mark.skipif(not ext_loader.ext_available("cpu"), reason="mmsoft._ext is not built")
def test_cpu_entry_exp_rejects_what_it_does_not_take():
    with pytest.raises(RuntimeError, match="float32 or float64"):
        ext_loader.get_ext().clamped_exp(torch.zeros(3, dtype=torch.float16))
    with pytest.raises(RuntimeError, match="loop must be"):
        ext_loader.get_ext().clamped_exp(torch.zeros(3), "sse")

@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_far_apart_entries_sit_at_the_floor_in_both_backends(device, dtype):
    """Queries 80 apart from every landmark (exp(-3200) underflows in float64 too): each kernel entry is exp(floor),
    a normal number, never a subnormal or zero, in the reference and in the fused kernels alike."""
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA kernels do not take float64")
    q = torch.zeros(1, 50, 4, dtype=dtype)
    k = torch.full((1, 3, 4), 40.0, dtype=acc_dtype(dtype))  # |q - k|^2 / 2 = 3200
    v = torch.ones(1, 50, 2, dtype=dtype)
    entry = math.exp(exp_floor(dtype))
    assert torch.all(reference.gaussian_kernel(q.to(k.dtype), k) == torch.tensor(entry, dtype=k.dtype))
    out = custom_ops.kernel_t_matmul(q.to(device), k.to(device), v.to(device)).cpu()
    assert torch.allclose(out, torch.full_like(out, 50 * entry), rtol=1e-6, atol=0)


def leaf64(*tensors):
    return [t.detach().double().cpu().requires_grad_() for t in tensors]


SIZES = [  # (B, N, m, d, c): N not a multiple of any tile, m = 1, d = 16 / 32 / 64, c != d
    (1, 1, 1, 16, 16),
    (2, 17, 1, 32, 32),
    (3, 129, 7, 64, 64),
    (2, 1000, 1024, 32, 32),  # CPU tiles of 64 rows with a partial last tile
    (1, 300, 33, 16, 5),
]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "B{}-N{}-m{}-d{}-c{}".format(*s))
def test_t_matmul_matches_reference(device, dtype, size):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA kernels do not take float64")
    q, k, v, _ = make_operands(*size, dtype, device)
    out = custom_ops.kernel_t_matmul(*(t.requires_grad_() for t in (q, k, v)))
    assert out.shape == (size[0], size[2], size[4]) and out.dtype == acc_dtype(dtype)
    q64, k64, v64 = leaf64(q, k, v)
    ref = reference.kernel_t_matmul(q64, k64, v64)
    # The output is in the accumulation dtype: only accumulation noise, no rounding to the input dtype.
    assert rel_err(out, ref) < TOLERANCES[acc_dtype(dtype)]
    tol = TOLERANCES[dtype]

    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad.double().cpu())
    for got, want, name in ((q.grad, q64.grad, "dq"), (k.grad, k64.grad, "dk"), (v.grad, v64.grad, "dv")):
        assert got.dtype == {"dq": q, "dk": k, "dv": v}[name].dtype
        assert rel_err(got, want) < tol, name


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("size", SIZES, ids=lambda s: "B{}-N{}-m{}-d{}-c{}".format(*s))
def test_matmul_matches_reference(device, dtype, size):
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA kernels do not take float64")
    q, k, _, w = make_operands(*size, dtype, device, seed=1)
    out = custom_ops.kernel_matmul(*(t.requires_grad_() for t in (q, k, w)))
    assert out.shape == (size[0], size[1], size[4]) and out.dtype == dtype
    q64, k64, w64 = leaf64(q, k, w)
    ref = reference.kernel_matmul(q64, k64, w64)
    tol = TOLERANCES[dtype]
    assert rel_err(out, ref) < tol

    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad.double().cpu())
    for got, want, name in ((q.grad, q64.grad, "dq"), (k.grad, k64.grad, "dk"), (w.grad, w64.grad, "dw")):
        assert rel_err(got, want) < tol, name


def test_gradcheck_float64_cpu(needs_cpu_ext):
    q, k, v, w = make_operands(2, 6, 3, 4, 3, torch.float64, "cpu", seed=3)
    args_t = [t.clone().requires_grad_() for t in (q, k, v)]
    args_n = [t.clone().requires_grad_() for t in (q, k, w)]
    assert torch.autograd.gradcheck(custom_ops.kernel_t_matmul, args_t, eps=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(custom_ops.kernel_matmul, args_n, eps=1e-6, atol=1e-8)


def test_gradcheck_detects_a_wrong_backward(needs_cpu_ext, monkeypatch):
    """The gradcheck above can fail: with dk's sign flipped it must."""
    q, k, v, _ = make_operands(1, 5, 2, 3, 2, torch.float64, "cpu", seed=4)
    real = custom_ops.kernel_t_matmul_backward

    def flipped(q, k, v, grad):
        dq, dk, dv = real(q, k, v, grad)
        return dq, -dk, dv

    monkeypatch.setattr(custom_ops, "kernel_t_matmul_backward", flipped)
    args = [t.clone().requires_grad_() for t in (q, k, v)]
    assert not torch.autograd.gradcheck(custom_ops.kernel_t_matmul, args, eps=1e-6, atol=1e-8, raise_exception=False)


def test_non_contiguous_inputs(device):
    b, n, m, d = 2, 70, 9, 32
    gen = torch.Generator().manual_seed(5)
    q = (torch.randn(b, d, n, generator=gen) * 0.2).to(device).transpose(1, 2)        # (B, N, d), strided
    k = (torch.randn(b, 2 * m, d, generator=gen) * 0.2).to(device)[:, ::2]            # every other landmark
    v = torch.randn(b, n, 2 * d, generator=gen).to(device)[..., :d]                  # column slice
    w = torch.randn(1, m, d, generator=gen).to(device).expand(b, m, d)               # broadcast batch
    assert not any(t.is_contiguous() for t in (q, k, v, w))
    assert torch.equal(custom_ops.kernel_t_matmul(q, k, v),
                       custom_ops.kernel_t_matmul(q.contiguous(), k.contiguous(), v.contiguous()))
    assert torch.equal(custom_ops.kernel_matmul(q, k, w),
                       custom_ops.kernel_matmul(q.contiguous(), k.contiguous(), w.contiguous()))


def test_batch_independence(device):
    """One item's result does not depend on its batch mates (nor, beyond rounding, on the batch size)."""
    q, k, v, w = make_operands(3, 200, 24, 32, 32, torch.float32, device, seed=6)
    base_t = custom_ops.kernel_t_matmul(q, k, v)
    base_n = custom_ops.kernel_matmul(q, k, w)
    # Same batch size, wildly different batch mates: item 0 is bit-identical.
    q2, k2, v2, w2 = (t.clone() for t in (q, k, v, w))
    for t in (q2, k2, v2, w2):
        t[1:] = t[1:] * 7.0 + 3.0
    assert torch.equal(custom_ops.kernel_t_matmul(q2, k2, v2)[0], base_t[0])
    assert torch.equal(custom_ops.kernel_matmul(q2, k2, w2)[0], base_n[0])
    # Alone in its batch: equal up to summation order.
    assert rel_err(custom_ops.kernel_t_matmul(q[:1], k[:1], v[:1])[0], base_t[0]) < 1e-6
    assert rel_err(custom_ops.kernel_matmul(q[:1], k[:1], w[:1])[0], base_n[0]) < 1e-6


def _saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd keeps for backward while running fn()."""
    seen = {}

    def pack(t):
        seen[(t.data_ptr(), t.numel(), t.dtype)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(seen.values())


def test_backward_saves_no_n_by_m_matrix(needs_cpu_ext):
    """A is recomputed in backward: what autograd keeps is O(N d + m c), not O(N m)."""
    b, n, m, d = 1, 4096, 512, 32
    q, k, v, _ = make_operands(b, n, m, d, d, torch.float32, "cpu", seed=7)
    q, k, v = (t.requires_grad_() for t in (q, k, v))
    n_by_m = b * n * m * 4

    def run(t_matmul, matmul):
        return lambda: matmul(q, k, t_matmul(q, k, v)).sum()

    ext = _saved_bytes(run(custom_ops.kernel_t_matmul, custom_ops.kernel_matmul))
    ref = _saved_bytes(run(reference.kernel_t_matmul, reference.kernel_matmul))
    assert ref >= n_by_m  # the reference keeps (at least) one full A
    assert ext <= 4 * (q.numel() + k.numel() + v.numel() + b * m * d)  # inputs + the m x c context only
    assert ext * 10 < ref


def _ext():
    from mmsoft.ops.ext_loader import get_ext
    return get_ext("cpu")


@pytest.mark.parametrize("case, pattern", [
    ("q_2d", r"q must be a 3-D tensor \(B, N, d\)"),
    ("q_int", r"q must be float16, bfloat16, float32 or float64"),
    ("k_wrong_dtype", r"k must be Float \(landmark-sized operands use the accumulation dtype"),
    ("k_wrong_d", r"k must have shape \(B, m, d\)"),
    ("v_wrong_n", r"v must have shape \(B, N, c\)"),
    ("v_wrong_dtype", r"v must be Half"),
    ("v_not_contiguous", r"v \(B, N, c\) must be contiguous"),
    ("no_landmarks", r"at least one landmark"),
    ("meta_device", r"CPU or CUDA device"),
])
def test_bad_inputs_raise_clear_errors(needs_cpu_ext, case, pattern):
    q = torch.randn(2, 10, 8, dtype=torch.float16)
    k = torch.randn(2, 4, 8)
    v = torch.randn(2, 10, 3, dtype=torch.float16)
    if case == "q_2d":
        q = q[0]
    elif case == "q_int":
        q = q.to(torch.int32)
    elif case == "k_wrong_dtype":
        k = k.half()
    elif case == "k_wrong_d":
        k = torch.randn(2, 4, 9)
    elif case == "v_wrong_n":
        v = v[:, :9]
    elif case == "v_wrong_dtype":
        v = v.float()
    elif case == "v_not_contiguous":
        v = torch.randn(2, 3, 10, dtype=torch.float16).transpose(1, 2)
    elif case == "no_landmarks":
        k = k[:, :0]
    elif case == "meta_device":
        q, k, v = (t.to("meta") for t in (q, k, v))
    with pytest.raises(RuntimeError, match=pattern):
        _ext().kernel_t_matmul_forward(q, k, v)


def test_bad_grad_shape_raises(needs_cpu_ext):
    q, k, _, w = make_operands(2, 10, 4, 8, 3, torch.float32, "cpu")
    with pytest.raises(RuntimeError, match=r"grad_out must have shape \(B, N, c\)"):
        _ext().kernel_matmul_backward(q, k, w, torch.zeros(2, 10, 4))
    with pytest.raises(RuntimeError, match=r"grad_out must be Float"):
        _ext().kernel_t_matmul_backward(q, k, torch.zeros(2, 10, 3), torch.zeros(2, 4, 3, dtype=torch.float64))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_rejects_float64_and_wide_heads():
    from mmsoft.ops.ext_loader import ext_available, get_ext
    if not ext_available("cuda"):
        pytest.skip("the extension was built without CUDA")
    ext = get_ext("cuda")
    q, k, v, _ = make_operands(1, 8, 2, 4, 4, torch.float64, "cuda")
    with pytest.raises(RuntimeError, match="float64"):
        ext.kernel_t_matmul_forward(q, k, v)
    q, k, v, _ = make_operands(1, 8, 2, 130, 4, torch.float32, "cuda")
    with pytest.raises(RuntimeError, match="up to 128"):
        ext.kernel_t_matmul_forward(q, k, v)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_dv_cols_computes_the_leading_columns_of_dv_only(device, dtype):
    """kernel_t_matmul_backward(..., dv_cols): dq and dk unchanged, dv = the first dv_cols columns of the full dv
    (the one-node products backward asks for A g of A [g, w]); the fake implementation gives the same shapes; a
    dv_cols outside [1, c] (other than -1, all) raises and says what it takes."""
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("the CUDA kernels do not take float64")
    q, k, v, grad = make_operands(2, 300, 33, 16, 6, dtype, device)
    full = custom_ops.kernel_t_matmul_backward(q, k, v, grad)
    part = custom_ops.kernel_t_matmul_backward(q, k, v, grad, 4)
    assert part[2].shape == (2, 300, 4) and part[2].is_contiguous()
    tol = 1e-12 if dtype == torch.float64 else 1e-6
    for got, want in zip(part, (full[0], full[1], full[2][..., :4])):
        assert rel_err(got.double(), want.double()) < tol
    with torch._subclasses.fake_tensor.FakeTensorMode() as mode:
        fake = custom_ops.kernel_t_matmul_backward(*(mode.from_tensor(t) for t in (q, k, v, grad)), 4)
    assert [tuple(t.shape) for t in fake] == [tuple(t.shape) for t in part]
    for bad in (0, 7, -2):
        with pytest.raises(RuntimeError, match=r"dv_cols must be -1 \(all\) or in \[1, c = 6\]"):
            custom_ops.kernel_t_matmul_backward(q, k, v, grad, bad)
