"""FLOP counting of SOFT models: mmsoft's op handles make mmengine's FlopAnalyzer match the analytic counts."""
from pathlib import Path

import pytest
import torch
from helpers.tool_modules import load_tool
from mmengine.analysis import FlopAnalyzer
from torch import nn

from mmsoft.models import SOFT
from mmsoft.models.layers.soft_attention import SOFTAttention
from mmsoft.models.layers.softmax_block import SoftmaxAttention
from mmsoft.ops import ext_available, soft_attention
from mmsoft.ops.flops import (
    newton_eigh_flops,
    newton_pinv_flops,
    newton_thin_flops,
    soft_attention_flops,
    soft_flop_handles,
)
from mmsoft.utils.complexity import count_flops, newton_iterations_skipped

ROOT = Path(__file__).resolve().parents[1]
IMPLS = ["reference"] + (["ext"] if ext_available("cpu") else [])


def analyze(module: nn.Module, *inputs: torch.Tensor, handles: bool = True) -> FlopAnalyzer:
    analyzer = FlopAnalyzer(module, inputs).unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    if handles:
        analyzer.set_op_handle(**soft_flop_handles())
    return analyzer


class Core(nn.Module):
    """Just the attention core, so that everything the analyzer counts is the SOFT attention."""

    def __init__(self, impl: str, num_iters: int, sym_norm: bool) -> None:
        super().__init__()
        self.impl, self.num_iters, self.sym_norm = impl, num_iters, sym_norm

    def forward(self, q, k, v):
        return soft_attention(q, k, v, sym_norm=self.sym_norm, num_iters=self.num_iters, impl=self.impl)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("sym_norm,num_iters", [(True, 20), (False, 7)])
def test_core_count_equals_formula(impl, sym_norm, num_iters):
    b, heads, n, m, d, c = 2, 3, 96, 12, 32, 16
    q, k, v = torch.randn(b, heads, n, d), torch.randn(b, heads, m, d), torch.randn(b, heads, n, c)
    core = Core(impl, num_iters, sym_norm)
    expected = soft_attention_flops(n, m, d, c, num_iters=num_iters, batch_heads=b * heads)
    assert analyze(core, q, k, v).total() == expected
    # what mmengine counts on its own: no Newton-Schulz at all (and no fused kernels)
    generic = analyze(core, q, k, v, handles=False).total()
    assert generic <= expected - newton_pinv_flops(m, num_iters) * b * heads


@pytest.mark.parametrize("impl", IMPLS)
def test_soft_attention_module_count(impl):
    b, dims, heads, sr, conv, (h, w) = 2, 64, 2, 4, 5, (16, 24)
    attn = SOFTAttention(dims, heads, sr, conv, attn_impl=impl, landmark_solver="newton").eval()

    class Wrapped(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.attn = attn

        def forward(self, x):
            return self.attn(x, (h, w))

    x = torch.randn(b, h * w, dims)
    n, m, d = h * w, (h // sr) * (w // sr), dims // heads
    core = soft_attention_flops(n, m, d, num_iters=20, batch_heads=b * heads)
    projections = 3 * b * n * dims * dims                      # q, v, proj
    landmark_conv = b * heads * m * d * d * sr * sr
    value_conv = b * d * heads * n * conv * conv               # depthwise, one kernel per head
    landmark_norm = 5 * b * heads * m * d                      # mmengine's LayerNorm count (affine)
    total = analyze(Wrapped(), x).total()
    assert total == core + projections + landmark_conv + value_conv + landmark_norm
    assert analyze(Wrapped(), x, handles=False).total() <= total - newton_pinv_flops(m, 20) * b * heads


def test_softmax_attention_sdpa_is_counted():
    b, n, dims, heads = 2, 48, 64, 4
    attn = SoftmaxAttention(dims, heads).eval()
    x = torch.randn(b, n, dims)
    linears = 4 * b * n * dims * dims                          # q, kv (2x), proj
    sdpa = b * n * n * 2 * dims                                # q k^T and attn v over all heads
    assert analyze(attn, x).total() == linears + sdpa
    assert analyze(attn, x, handles=False).total() == linears


def test_skipping_newton_iterations_counts_the_same():
    model = SOFT(arch="tiny", drop_path_rate=0.0).eval()
    images = torch.randn(1, 3, 64, 96)
    exact = count_flops(model, (images,), exact_newton=True)
    fast = count_flops(model, (images,))
    assert fast.total() == exact.total() and fast.by_operator() == exact.by_operator()
    assert {m.newton_iters for m in model.modules() if isinstance(m, SOFTAttention)} == {20}  # restored
    # the default 'auto' is counted as 'newton' (the published computation), then restored
    assert {m.landmark_solver for m in model.modules() if isinstance(m, SOFTAttention)} == {"auto"}
    # grids 16x24, 8x12, 4x6 at sr 8, 4, 2: 6 landmarks per head in every SOFT stage; 2*1 + 4*2 + 10*3 heads
    assert exact.by_operator()["newton_pinv"] == 40 * newton_pinv_flops(6, 20)


@pytest.mark.parametrize("solver, key", [("newton_thin", "newton_thin"), ("newton_eigh", "newton_eigh"),
                                         ("cholesky", "cholesky")])
def test_other_landmark_solvers_are_counted(solver, key):
    model = SOFT(arch="tiny", drop_path_rate=0.0, landmark_solver=solver).eval()
    images = torch.randn(1, 3, 64, 96)
    counted = count_flops(model, (images,)).by_operator()
    assert "newton_pinv" not in counted
    # 6 landmarks per head, head dim 32, 2*1 + 4*2 + 10*3 = 40 head-layers (see above)
    per_head = {"newton_thin": newton_thin_flops(6, 32, 20), "newton_eigh": newton_eigh_flops(6, 32),
                "cholesky": 6 ** 3 // 6 + 6 * 6 * 32}[solver]
    assert counted[key] == 40 * per_head
    if solver != "cholesky":  # the iteration count is recorded on the node, also when tracing skips the iterations
        assert count_flops(model, (images,), exact_newton=True).by_operator()[key] == 40 * per_head


def test_newton_skip_leaves_mixed_iteration_counts_alone():
    model = SOFT(arch="tiny", newton_iters=20)
    first = next(m for m in model.modules() if isinstance(m, SOFTAttention))
    first.newton_iters = 5
    with newton_iterations_skipped(model) as iters:
        assert iters is None and first.newton_iters == 5


def get_flops():
    return load_tool("tools/analysis/get_flops.py")


def test_get_flops_tool_detection(capsys):
    result = get_flops().main([str(ROOT / "configs/demo/retinanet_soft-t-norm_fpn_demo.py"), "--shape", "64", "96"])
    assert result["input_shape"] == (64, 96)
    assert result["flops_by_operator"]["newton_pinv"] == 40 * newton_pinv_flops(6, 20)
    assert 0 < result["backbone_flops"] < result["flops"]
    assert result["backbone_params"] == sum(p.numel() for p in SOFT(arch="tiny").parameters())
    assert "Flops:" in capsys.readouterr().out


def test_get_flops_tool_segmentation():
    result = get_flops().main([str(ROOT / "configs/demo/upernet_soft-t-norm_demo.py"), "--shape", "50"])
    assert result["input_shape"] == (64, 64)  # rounded up to a multiple of 32
    assert result["flops_by_operator"]["newton_pinv"] > 0 and result["backbone_flops"] < result["flops"]
