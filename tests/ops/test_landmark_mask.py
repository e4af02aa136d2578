"""Masked landmarks (``soft_attention(..., landmark_mask=...)``): the valid landmarks compute exactly what they compute
alone (same Newton start, same spectral filter, same SOFT-Norm row sums), the masked ones contribute nothing."""
import pytest
import torch
from utils import landmark_solve, rel_err

from mmsoft.ops import ext_loader, soft_attention
from mmsoft.ops.landmark_solvers import SOLVERS, landmark_operator, mask_landmark_kernel
from mmsoft.ops.reference import gaussian_kernel, newton_alpha

B, HEADS, M_VALID, M_MASKED, D, C = 2, 3, 7, 5, 8, 4


def _landmarks(dtype=torch.float64):
    """Clustered valid landmarks (an ill-conditioned kernel: the Newton start and filter matter), masked landmarks
    interleaved with them, some close to valid ones; image 1 has every landmark valid."""
    gen = torch.Generator().manual_seed(0)
    m = M_VALID + M_MASKED
    k = torch.randn(B, HEADS, m, D, generator=gen, dtype=torch.float64) * 0.3
    mask = torch.ones(B, m, dtype=torch.bool)
    mask[0, torch.randperm(m, generator=gen)[:M_MASKED]] = False
    return k.to(dtype), mask[:, None]  # mask (B, 1, m): shared by the heads


def _valid_only(t: torch.Tensor, mask: torch.Tensor, image: int) -> torch.Tensor:
    """``t (B, heads, m, ...)``'s valid landmarks of one image, ``(1, heads, m_valid, ...)``: the Newton start is
    shared by the heads of an image (grouped by the first dim), so the image stays a batch of one."""
    return t[image:image + 1][:, :, mask[image, 0]]


def test_masked_kernel_keeps_the_published_newton_start():
    k, mask = _landmarks()
    kernel = gaussian_kernel(k, k)
    masked = mask_landmark_kernel(kernel, mask)
    valid = gaussian_kernel(_valid_only(k, mask, 0), _valid_only(k, mask, 0))  # (1, heads, m_valid, m_valid)
    # alpha = 2 / r^2 halved h times: the same r and the same number of halvings as the valid landmarks alone
    assert rel_err(newton_alpha(masked[:1]), newton_alpha(valid)) < 1e-14
    assert newton_alpha(valid).flatten()[0].item() < 0.99 * 2 / valid.sum(-1).amax().item() ** 2  # halvings happened
    assert torch.equal(masked[1], kernel[1])  # nothing masked, nothing changed


@pytest.mark.parametrize("solver", SOLVERS)
@pytest.mark.parametrize("sym_norm", [True, False])
def test_valid_landmarks_compute_what_they_compute_alone(solver, sym_norm):
    k, mask = _landmarks()
    x = torch.randn(B, HEADS, k.shape[-2], C, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    masked = landmark_operator(k, sym_norm=sym_norm, solver=solver, landmark_mask=mask)(x)
    alone = landmark_solve(_valid_only(k, mask, 0), _valid_only(x, mask, 0), sym_norm=sym_norm, solver=solver)
    assert rel_err(_valid_only(masked, mask, 0), alone) < 1e-9
    assert masked[0][:, ~mask[0, 0]].abs().max() == 0  # masked landmarks' rows are zero
    unmasked = landmark_solve(k[1:], x[1:], sym_norm=sym_norm, solver=solver)
    assert rel_err(masked[1:], unmasked) < 1e-12


@pytest.mark.parametrize("impl", ["reference", "ext"])
def test_soft_attention_with_padded_tokens_and_masked_landmarks(impl):
    """Padded tokens (zero values) and masked landmarks: valid tokens' outputs and gradients are those of the valid
    tokens and landmarks alone."""
    if impl == "ext" and not ext_loader.ext_available("cpu"):
        pytest.skip("mmsoft._ext is not built for the CPU")
    k, mask = _landmarks()
    gen = torch.Generator().manual_seed(2)
    n_valid, n = 20, 32
    q = (torch.randn(B, HEADS, n, D, generator=gen, dtype=torch.float64) * 0.3).requires_grad_()
    v = torch.randn(B, HEADS, n, C, generator=gen, dtype=torch.float64)
    v_padded = torch.cat([v[:, :, :n_valid], torch.zeros_like(v[:, :, n_valid:])], 2)
    k = k.requires_grad_()
    out = soft_attention(q, k, v_padded, impl=impl, landmark_mask=mask)
    grad_out = torch.randn_like(out)
    (out[0, :, :n_valid] * grad_out[0, :, :n_valid]).sum().backward()
    kv = _valid_only(k.detach(), mask, 0).requires_grad_()
    qv = q.detach()[:1, :, :n_valid].requires_grad_()
    alone = soft_attention(qv, kv, v[:1, :, :n_valid], impl=impl)
    (alone * grad_out[:1, :, :n_valid]).sum().backward()
    assert rel_err(out[:1, :, :n_valid], alone) < 1e-9
    assert rel_err(q.grad[:1, :, :n_valid], qv.grad) < 1e-8
    assert rel_err(_valid_only(k.grad, mask, 0), kv.grad) < 1e-8
    assert k.grad[0][:, ~mask[0, 0]].abs().max() == 0


def test_bad_masks_raise_clear_errors():
    k, mask = _landmarks(torch.float32)
    q = torch.randn(B, HEADS, 10, D)
    v = torch.randn(B, HEADS, 10, C)
    with pytest.raises(TypeError, match="landmark_mask must be a bool tensor"):
        soft_attention(q, k, v, landmark_mask=mask.float())
    with pytest.raises(ValueError, match="does not broadcast to the landmarks"):
        soft_attention(q, k, v, landmark_mask=mask[..., :3])
