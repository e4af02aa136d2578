"""A NaN / inf in one image stays in that image, for every landmark solver and backend (issue 11.3).

``newton_eigh`` used to raise ``LinAlgError`` for the whole batch (``torch.linalg.eigh`` cannot decompose a NaN
matrix), which under AMP turns an overflow that the loss scaler would skip into a crash. The rule everywhere: the
other images of the batch get exactly their results alone; the affected image gets NaN (never a silently finite
value). Newton-type solvers share ``alpha`` between the heads of one image (the published models' start, see
:func:`mmsoft.ops.reference.newton_alpha`), so a bad landmark kernel makes all of that image's heads NaN.
"""
import pytest
import torch
from utils import make_inputs

from mmsoft.models.backbones.soft import SOFT
from mmsoft.ops import ext_loader, soft_attention
from mmsoft.ops.landmark_solvers import SOLVERS, newton_eigh_factors
from mmsoft.ops.reference import gaussian_kernel

IMPLS = [
    "reference",
    pytest.param("ext", marks=pytest.mark.skipif(not ext_loader.ext_available("cpu"), reason="mmsoft._ext not built")),
]


def run(q, k, v, solver, impl):
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    out = soft_attention(*leaves, solver=solver, impl=impl)
    out.backward(torch.ones_like(out))
    return out.detach(), [t.grad for t in leaves]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("where", ["q", "k", "v", "k_inf"])
def test_bad_value_in_image0_leaves_image1_alone(solver, impl, where):
    q, k, v = make_inputs()
    bad = {"q": q, "k": k, "k_inf": k, "v": v}[where].clone()
    bad[0, 0, 3, 1] = float("inf") if where == "k_inf" else float("nan")
    inputs = {"q": q, "k": k, "v": v, where[0]: bad}
    out, grads = run(inputs["q"], inputs["k"], inputs["v"], solver, impl)
    alone_out, alone_grads = run(q[1:], k[1:], v[1:], solver, impl)

    assert torch.isfinite(out[1]).all()
    torch.testing.assert_close(out[1:], alone_out, rtol=1e-5, atol=1e-6)
    for got, want in zip(grads, alone_grads):
        assert torch.isfinite(got[1]).all()
        torch.testing.assert_close(got[1:], want, rtol=1e-4, atol=1e-6)
    # The bad value is not hidden: the affected head of image 0 is NaN.
    assert torch.isnan(out[0, 0]).any()
    if where.startswith("k") and solver != "cholesky":
        assert torch.isnan(out[0, 1]).all()  # alpha is shared by the heads of one image (the published start)


def test_newton_eigh_factors_per_matrix_without_raising():
    gen = torch.Generator().manual_seed(1)
    k = torch.randn(3, 2, 12, 4, generator=gen, dtype=torch.float64)
    kernels = gaussian_kernel(k, k)
    kernels[0, 1, 2, 5] = float("nan")
    kernels[1, 0, 0, 0] = float("inf")
    eigvecs, filt = newton_eigh_factors(kernels, 20)
    assert torch.isnan(filt[0]).all()  # a NaN head: alpha (per image) is NaN for both heads of the image
    assert torch.isnan(filt[1, 0]).all()  # the inf matrix itself
    alone_vecs, alone_filt = newton_eigh_factors(kernels[2:], 20)
    assert torch.equal(filt[2:], alone_filt) and torch.equal(eigvecs[2:], alone_vecs)


@pytest.mark.parametrize("solver", SOLVERS)
def test_backbone_nan_pixel_stays_in_its_image(solver):
    torch.manual_seed(0)
    model = SOFT(arch="tiny", landmark_solver=solver).eval()
    x = torch.randn(2, 3, 64, 96)
    bad = x.clone()
    bad[0, 1, 10, 20] = float("nan")
    with torch.no_grad():
        together = model(bad)
        alone = model(x[1:])
    assert torch.isnan(together[0][0]).any()
    for got, want in zip(together, alone):
        assert torch.isfinite(got[1]).all()
        torch.testing.assert_close(got[1:], want, rtol=1e-4, atol=1e-5)
