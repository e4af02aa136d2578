"""soft_attention end to end: every backend against the reference, dispatch ('auto' | 'ext' | 'reference'),
the one-time fallback log, mmsoft.ops.info(), and torch.compile without graph breaks."""
import pytest
import torch
from utils import TOLERANCES, make_inputs, rel_err

from mmsoft.ops import dispatch, ext_loader, info, resolve_impl, soft_attention


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64], ids=str)
@pytest.mark.parametrize("sym_norm", [True, False])
def test_ext_matches_reference(device, dtype, sym_norm):
    """Same inputs, same Newton part: the fused products agree with the materialised ones per dtype."""
    if device == "cuda" and dtype == torch.float64:
        pytest.skip("float64 on CUDA runs the reference ('auto') or raises ('ext')")
    q, k, v = make_inputs(2, 2, 150, 20, 32, dtype=dtype, device=device)
    leaves = {}
    outs = {}
    for impl in ("ext", "reference"):
        leaves[impl] = [t.clone().requires_grad_() for t in (q, k, v)]
        outs[impl] = soft_attention(*leaves[impl], sym_norm=sym_norm, num_iters=20, impl=impl)
        assert outs[impl].dtype == dtype and outs[impl].shape == v.shape
    tol = TOLERANCES[dtype]
    assert rel_err(outs["ext"], outs["reference"]) < tol
    grad = torch.randn_like(outs["ext"])
    for impl in ("ext", "reference"):
        outs[impl].backward(grad)
    for i, name in enumerate("qkv"):
        assert rel_err(leaves["ext"][i].grad, leaves["reference"][i].grad) < tol, name


def test_mixed_dtypes_under_autocast_like_inputs(needs_cpu_ext):
    """The layer can hand over fp16 q / v with fp32 landmarks (LayerNorm under autocast); output is v's dtype."""
    q, k, v = make_inputs(1, 2, 64, 16, 32, dtype=torch.float32, device="cpu", seed=1)
    out = soft_attention(q.half(), k, v.half(), impl="ext")
    ref = soft_attention(q.half(), k, v.half(), impl="reference")
    assert out.dtype == torch.float16
    assert rel_err(out, ref) < TOLERANCES[torch.float16]


def test_gradcheck_soft_attention_float64_cpu(needs_cpu_ext):
    """Through the whole op (Newton converged on well separated landmarks, so its closed-form backward is exact)."""
    gen = torch.Generator().manual_seed(2)
    q = (torch.randn(1, 2, 7, 4, generator=gen, dtype=torch.float64) * 0.5).requires_grad_()
    k = (torch.randn(1, 2, 3, 4, generator=gen, dtype=torch.float64) * 1.5).requires_grad_()
    v = torch.randn(1, 2, 7, 3, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda q, k, v: soft_attention(q, k, v, num_iters=60, impl="ext"), (q, k, v),
                                    eps=1e-6, atol=1e-6)


def test_batch_independence_end_to_end(device):
    q, k, v = make_inputs(3, 2, 96, 12, 32, dtype=torch.float32, device=device, seed=3)
    base = soft_attention(q, k, v, impl="ext")
    q2, k2, v2 = (t.clone() for t in (q, k, v))
    q2[1:], k2[1:], v2[1:] = q2[1:] * 3, k2[1:] * 5 + 1, v2[1:] * -2  # batch mates with other scales
    assert torch.equal(soft_attention(q2, k2, v2, impl="ext")[0], base[0])
    assert rel_err(soft_attention(q[:1], k[:1], v[:1], impl="ext")[0], base[0]) < 1e-5


def test_non_contiguous_layer_layout(device):
    """q / v as the layer makes them: (B, N, heads, d) transposed to (B, heads, N, d)."""
    q, k, v = make_inputs(2, 2, 80, 10, 32, dtype=torch.float32, device=device, seed=4)
    q_nc = q.transpose(1, 2).contiguous().transpose(1, 2)
    v_nc = v.transpose(1, 2).contiguous().transpose(1, 2)
    assert not q_nc.is_contiguous() and not v_nc.is_contiguous()
    assert torch.equal(soft_attention(q_nc, k, v_nc, impl="ext"), soft_attention(q, k, v, impl="ext"))


def test_leading_dims_are_free(needs_cpu_ext):
    # The first dim indexes images (one Newton start per image, shared by the image's other dims): 3-D inputs are
    # images of one head each; more leading dims are more heads of the same image.
    q, k, v = make_inputs(1, 2, 40, 6, 16, dtype=torch.float32, device="cpu", seed=5)
    three_d = soft_attention(q[0], k[0], v[0], impl="ext")
    assert three_d.shape == (2, 40, 16)
    assert torch.equal(three_d, soft_attention(q[0, :, None], k[0, :, None], v[0, :, None], impl="ext")[:, 0])
    five_d = soft_attention(q[:, None], k[:, None], v[:, None], impl="ext")
    assert torch.equal(five_d[:, 0], soft_attention(q, k, v, impl="ext"))
    empty = soft_attention(q[:0], k[:0], v[:0], impl="ext")
    assert empty.shape == (0, 2, 40, 16)


def test_auto_uses_the_extension_when_built(needs_cpu_ext):
    q, k, v = make_inputs(1, 1, 8, 2, 16, dtype=torch.float32, device="cpu")
    assert resolve_impl("auto", q, k, v) == "ext"
    assert resolve_impl("reference", q, k, v) == "reference"
    assert torch.equal(soft_attention(q, k, v), soft_attention(q, k, v, impl="ext"))


def test_auto_falls_back_with_one_log_line(monkeypatch):
    monkeypatch.setattr(ext_loader, "EXT_BACKENDS", frozenset())
    monkeypatch.setattr(dispatch, "_fallbacks_logged", set())
    messages = []
    monkeypatch.setattr(dispatch, "_emit_log", messages.append)
    q, k, v = make_inputs(1, 2, 30, 4, 16, dtype=torch.float32, device="cpu")
    outs = [soft_attention(q, k, v, impl="auto") for _ in range(3)]
    assert len(messages) == 1
    assert "not built" in messages[0] and "setup.py build_ext --inplace" in messages[0]
    assert all(torch.equal(o, soft_attention(q, k, v, impl="reference")) for o in outs)


def test_ext_unavailable_raises_with_build_instructions(monkeypatch):
    monkeypatch.setattr(ext_loader, "EXT_BACKENDS", frozenset({"cuda"}))  # as if built for CUDA only
    q, k, v = make_inputs(1, 1, 8, 2, 16, dtype=torch.float32, device="cpu")
    with pytest.raises(RuntimeError, match=r"not built for 'cpu'.*setup\.py build_ext --inplace"):
        soft_attention(q, k, v, impl="ext")


def test_ext_eligibility_reads_the_cuda_limit_of_the_build(monkeypatch):
    """The CUDA channel limit comes from the build (build_info()['cuda_max_channels']), not from a Python copy."""
    monkeypatch.setattr(ext_loader, "EXT_BACKENDS", frozenset({"cpu", "cuda"}))
    monkeypatch.setattr(ext_loader, "CUDA_MAX_CHANNELS", 16)
    assert ext_loader.ext_unsupported("cuda", (torch.float32,), 16) is None
    assert "up to 16" in ext_loader.ext_unsupported("cuda", (torch.float32,), 17)
    assert "float64" in ext_loader.ext_unsupported("cuda", (torch.float64,), 8)
    assert ext_loader.ext_unsupported("cpu", (torch.float64,), 512) is None  # the CPU kernels have neither limit


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_float64_auto_falls_back_and_ext_raises():
    q, k, v = make_inputs(1, 1, 8, 2, 16, dtype=torch.float64, device="cuda")
    assert resolve_impl("auto", q, k, v) == "reference"
    with pytest.raises(RuntimeError):
        soft_attention(q, k, v, impl="ext")


def test_unknown_impl_and_bad_shapes_raise():
    q, k, v = make_inputs(1, 1, 8, 2, 16, dtype=torch.float32, device="cpu")
    with pytest.raises(ValueError, match="impl must be one of"):
        soft_attention(q, k, v, impl="cuda")
    with pytest.raises(ValueError, match="share the channel dim"):
        soft_attention(q, k[..., :8], v)
    with pytest.raises(ValueError, match="same number of tokens"):
        soft_attention(q, k, v[..., :4, :])


def test_info_reports_the_build():
    result = info(verbose=False)
    assert set(result) >= {"built", "backends", "cuda_archs", "built_with_torch", "runtime_torch"}
    assert result["built"] == bool(ext_loader.EXT_BACKENDS)
    if result["built"]:
        assert "cpu" in result["backends"]
        assert result["built_with_torch"] == torch.__version__
        assert ("cuda" in result["backends"]) == bool(result["cuda_archs"])


@pytest.mark.parametrize("impl", ["ext", "auto"])
def test_torch_compile_fullgraph(needs_cpu_ext, impl):
    """The custom ops have fake kernels and registered autograd: no graph break, same values as eager."""
    q, k, v = (t.requires_grad_() for t in make_inputs(2, 2, 64, 8, 32, dtype=torch.float32, device="cpu", seed=6))
    compiled = torch.compile(lambda q, k, v: soft_attention(q, k, v, impl=impl), backend="aot_eager",
                             fullgraph=True)
    out = compiled(q, k, v)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    eager = soft_attention(q, k, v, impl="ext")
    eager_grads = torch.autograd.grad(eager.square().sum(), (q, k, v))
    assert torch.allclose(out, eager, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, eager_grads):
        assert torch.allclose(got, want, rtol=1e-4, atol=1e-6)


def test_torch_compile_soft_attention_layer(needs_cpu_ext):
    """The backbone's attention layer compiles as one graph with the fused ops inside."""
    from mmsoft.models.layers.soft_attention import SOFTAttention

    torch.manual_seed(0)
    layer = SOFTAttention(embed_dims=64, num_heads=2, sr_ratio=2, conv_size=3, attn_impl="ext")
    x = torch.randn(2, 8 * 8, 64, requires_grad=True)
    explanation = torch._dynamo.explain(layer)(x, (8, 8))
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1
    targets = {str(node.target) for graph in explanation.graphs for node in graph.graph.nodes}
    assert {"mmsoft.kernel_t_matmul.default", "mmsoft.kernel_matmul.default"} <= targets
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    out = compiled(x, (8, 8))
    out.sum().backward()
    assert torch.allclose(out, layer(x, (8, 8)), rtol=1e-5, atol=1e-6)
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_inference_mode_matches_no_grad(needs_cpu_ext):
    """The CPU kernels write into caller-allocated outputs from worker threads; under torch.inference_mode()
    those are inference tensors, so the workers must inherit the mode (regression: they raised)."""
    q, k, v = make_inputs(2, 2, 300, 16, 32, dtype=torch.float32, device="cpu")
    with torch.no_grad():
        expected = soft_attention(q, k, v, impl="ext")
    with torch.inference_mode():
        out = soft_attention(q, k, v, impl="ext")
    assert out.is_inference()
    torch.testing.assert_close(out, expected, rtol=0, atol=0)
