"""The SOFT backbone: presets, shapes, gradients, freezing and argument checking."""
import math

import pytest
import torch
from torch import nn

from mmsoft.models import SOFT

# Published ImageNet parameter counts (millions, truncated as the papers print them).
PUBLISHED_PARAMS_M = {"tiny": 13, "small": 24, "medium": 45, "large": 64, "huge": 87}


def imagenet_model_params(backbone: SOFT, num_classes: int = 1000) -> int:
    """Backbone parameters plus what the ImageNet model adds: the classifier, the cls token and its
    position-embedding slot."""
    c = backbone.embed_dims[-1]
    return sum(p.numel() for p in backbone.parameters()) + (c * num_classes + num_classes) + c + c


@pytest.mark.parametrize("arch", list(PUBLISHED_PARAMS_M))
def test_preset_params_and_shapes_on_odd_input(arch):
    torch.manual_seed(0)
    model = SOFT(arch=arch, drop_path_rate=0.0).eval()
    total = imagenet_model_params(model)
    print(f"SOFT-{arch}: backbone {sum(p.numel() for p in model.parameters()):,} params, "
          f"ImageNet model {total:,} ({total / 1e6:.2f}M) vs published {PUBLISHED_PARAMS_M[arch]}M")
    assert math.floor(total / 1e6) == PUBLISHED_PARAMS_M[arch]
    h, w = (333, 517) if arch in ("tiny", "small") else (97, 65)
    with torch.no_grad():
        outs = model(torch.randn(1, 3, h, w))
    assert len(outs) == 4
    for out, stride, c in zip(outs, (4, 8, 16, 32), model.embed_dims):
        assert out.shape == (1, c, math.ceil(h / stride), math.ceil(w / stride))
        assert torch.isfinite(out).all()


def test_reference_small_depths_do_not_match_published_count():
    # The reference code's soft_small preset uses depths [1, 3, 20, 4]; that is not the 24M model.
    ref_small = SOFT(arch=dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16], depths=[1, 3, 20, 4]))
    assert math.floor(imagenet_model_params(ref_small) / 1e6) == 38


@pytest.mark.parametrize("size", [(64, 96), (333, 517), (32, 32)])
def test_padding_is_invisible_to_padded_inputs(size):
    """Odd sizes give ResNet-like sizes; a zero-padded input gives the maps of the image without its padding."""
    torch.manual_seed(0)
    model = SOFT(arch="tiny", out_indices=(0, 3)).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        outs = model(x)
    assert [o.shape[-2:] for o in outs] == [(math.ceil(size[0] / s), math.ceil(size[1] / s)) for s in (4, 32)]
    if size[0] % 32 == 0 and size[1] % 32 == 0:
        # the explicitly zero-padded version of a smaller image gives the smaller image's maps (its trailing zero
        # rows / columns are masked as padding)
        small = x[..., : size[0] - 5, : size[1] - 7]
        with torch.no_grad():
            a = model(small)[0]
            b = model(nn.functional.pad(small, (0, 7, 0, 5)))[0][..., : a.shape[-2], : a.shape[-1]]
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("sym_norm", [True, False])
def test_gradients_reach_every_parameter(sym_norm):
    torch.manual_seed(0)
    model = SOFT(arch="tiny", sym_norm=sym_norm, drop_path_rate=0.0)
    model.init_weights()
    outs = model(torch.randn(2, 3, 64, 96))
    sum(o.float().pow(2).mean() for o in outs).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None]
    assert not missing, f"no gradient for {missing}"
    zero = [n for n, p in model.named_parameters() if p.grad.abs().sum() == 0]
    assert not zero, f"all-zero gradient for {zero}"


def test_sym_norm_changes_the_function():
    torch.manual_seed(0)
    a = SOFT(arch="tiny", sym_norm=True).eval()
    b = SOFT(arch="tiny", sym_norm=False).eval()
    b.load_state_dict(a.state_dict())  # same parameters, only the normalisation differs
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert not torch.allclose(a(x)[0], b(x)[0])


def test_with_cp_gives_same_output_and_gradients():
    torch.manual_seed(0)
    plain = SOFT(arch="tiny", drop_path_rate=0.0)
    ckpt = SOFT(arch="tiny", drop_path_rate=0.0, with_cp=True)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(1, 3, 64, 64)
    grads = []
    for m in (plain, ckpt):
        m.train()
        sum(o.sum() for o in m(x)).backward()
        grads.append(m.stages[1].blocks[0].attn.q.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-5)


def test_frozen_stages_and_norm_eval():
    model = SOFT(arch="tiny", frozen_stages=1, norm_eval=True)
    model.train()
    stage0 = list(model.stages[0].parameters())
    assert all(not p.requires_grad for p in stage0)
    assert all(p.requires_grad for p in model.stages[1].parameters())
    assert not model.stages[0].training
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns and all(not m.training for m in bns)
    stem_only = SOFT(arch="tiny", frozen_stages=0)
    stem_only.train()
    assert not any(p.requires_grad for p in stem_only.stages[0].patch_embed.parameters())
    assert not stem_only.stages[0].pos_embed.requires_grad
    assert all(p.requires_grad for p in stem_only.stages[0].blocks.parameters())


def test_out_indices_subset():
    model = SOFT(arch="tiny", out_indices=(1, 2)).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [128, 320]


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(arch="gigantic"), ValueError, "unknown SOFT arch"),
    (dict(out_indices=(0, 4)), ValueError, "out_indices"),
    (dict(out_indices=()), ValueError, "out_indices"),
    (dict(arch=dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 7, 16], depths=[1, 1, 1, 1])),
     ValueError, "not divisible by num_heads"),
    (dict(arch=dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16])), ValueError, "missing"),
    (dict(arch=dict(embed_dims=[64, 128, 320], num_heads=[2, 4, 10], depths=[1, 1, 1])), ValueError,
     "4 values"),
    (dict(arch=dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16], depths=[1, 1, 1, 1], heads=3)),
     ValueError, "unknown keys"),
    (dict(frozen_stages=5), ValueError, "frozen_stages"),
])
def test_bad_arguments_raise_clear_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SOFT(**kwargs)


def test_bad_inputs_raise_clear_errors():
    model = SOFT(arch="tiny").eval()
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(1, 4, 64, 64))
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        model(torch.randn(3, 64, 64))
    with pytest.raises(TypeError, match="floating"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))


# ---------------------------------------------------------------------- stages after max(out_indices)
@pytest.mark.parametrize("out_indices,built", [((0, 1, 2), 3), ((1,), 2), ((0,), 1), ((3, 0), 4)])
def test_stages_after_the_last_output_are_not_built(out_indices, built):
    torch.manual_seed(0)
    model = SOFT(arch="tiny", out_indices=out_indices, drop_path_rate=0.0, with_cls_token=True)
    model.init_weights()
    assert len(model.stages) == model.num_stages == built
    assert not any(n.startswith(f"stages.{built}.") for n, _ in model.named_parameters())
    outs = model(torch.randn(2, 3, 64, 96))
    assert model.out_indices == tuple(sorted(out_indices))  # maps come in stage order, as mmdet's ResNet gives them
    assert [o.shape[1] for o in outs] == [model.embed_dims[i] for i in sorted(out_indices)]
    sum(o.pow(2).mean() for o in outs).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.any()]
    assert not no_grad, f"parameters without gradient: {no_grad}"


def test_truncated_backbone_computes_the_same_stages_and_loads_a_full_checkpoint(tmp_path, monkeypatch):
    from mmsoft.models.backbones import soft_converter

    torch.manual_seed(0)
    full = SOFT(arch="tiny", drop_path_rate=0.0)
    full.init_weights()
    path = tmp_path / "full.pth"
    torch.save({"state_dict": full.state_dict()}, path)
    logged = []
    monkeypatch.setattr(soft_converter, "print_log", lambda msg, **kwargs: logged.append(msg))
    three = SOFT(arch="tiny", out_indices=(0, 1, 2), drop_path_rate=0.0,
                 init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    three.init_weights()  # strict: the checkpoint's stage-4 keys are reported, not an error
    assert "stages.3.pos_embed (stage not built: out_indices)" in logged[0]
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        expected = full.eval()(x)[:3]
        got = three.eval()(x)
    assert all(torch.equal(a, b) for a, b in zip(expected, got))


def test_frozen_stages_beyond_the_built_stages_freeze_all_of_them():
    model = SOFT(arch="tiny", out_indices=(0, 1), frozen_stages=4)
    model.train()
    assert not any(p.requires_grad for p in model.parameters())
    assert not any(m.training for stage in model.stages for m in stage.modules())


# ---------------------------------------------------------------------- mmseg's legacy pretrained=
def _mmseg_upernet_config(tmp_path, pretrained: str, backbone_extra: str = ""):
    from mmengine.config import Config

    path = tmp_path / "upernet_soft_pretrained.py"
    path.write_text(f"""
_base_ = 'mmseg::upernet/upernet_r50_4xb4-160k_ade20k-512x512.py'
custom_imports = dict(imports=['mmsoft'], allow_failed_imports=False)
model = dict(
    pretrained={pretrained!r},
    backbone=dict(_delete_=True, type='mmsoft.SOFT', arch='tiny', out_indices=(0, 1, 2, 3){backbone_extra}),
    decode_head=dict(in_channels=[64, 128, 320, 512], channels=32),
    auxiliary_head=dict(in_channels=320, channels=16))
""")
    return Config.fromfile(path)


def _build_mmseg(cfg):
    from mmengine.registry import MODELS, init_default_scope

    from mmsoft.utils import prepare_scope

    init_default_scope(prepare_scope(cfg))
    return MODELS.build(cfg.model)


def test_mmseg_model_pretrained_loads_the_backbone_with_a_deprecation_warning(tmp_path):
    torch.manual_seed(0)
    trained = SOFT(arch="tiny")
    trained.init_weights()
    path = tmp_path / "soft_tiny.pth"
    torch.save({"state_dict": trained.state_dict()}, path)
    with pytest.warns(FutureWarning, match="pretrained=.* is deprecated; use init_cfg=dict\\(type='Pretrained'"):
        segmentor = _build_mmseg(_mmseg_upernet_config(tmp_path, str(path)))
    assert segmentor.backbone.init_cfg == dict(type="Pretrained", checkpoint=str(path))
    segmentor.init_weights()
    state = segmentor.backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in trained.state_dict().items())


def test_pretrained_and_init_cfg_together_say_which_to_keep(tmp_path):
    cfg = _mmseg_upernet_config(tmp_path, "a.pth", ", init_cfg=dict(type='Pretrained', checkpoint='b.pth')")
    with pytest.raises(ValueError, match="both pretrained='a.pth' and init_cfg=.*keep only init_cfg .*"
                                         "model.pretrained=None"):
        _build_mmseg(cfg)
    with pytest.raises(TypeError, match="pretrained must be a checkpoint path"):
        SOFT(pretrained=True)


# ---------------------------------------------------------------------- unsupported uses, said clearly
@pytest.mark.parametrize("out_indices", [(0, 1, 2, 3), (1, 2)])
def test_empty_batch_gives_empty_maps_with_gradients(out_indices):
    model = SOFT(arch="tiny", out_indices=out_indices)
    outs = model(torch.randn(0, 3, 100, 130))
    assert [tuple(o.shape) for o in outs] == [
        (0, model.embed_dims[i], math.ceil(100 / s), math.ceil(130 / s)) for i, s in
        zip(out_indices, [(4, 8, 16, 32)[i] for i in out_indices])]
    sum(o.sum() for o in outs).backward()  # a DDP rank with no image still reaches every parameter
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_torch_jit_script_says_it_is_unsupported():
    with pytest.raises(RuntimeError, match="torch.jit.script does not support mmsoft.SOFT.*torch.compile"):
        torch.jit.script(SOFT(arch="tiny", out_indices=(0,)))


def test_torch_jit_trace_is_guarded_to_the_traced_size():
    torch.manual_seed(0)
    model = SOFT(arch="tiny", out_indices=(0, 1)).eval()
    x = torch.randn(1, 3, 64, 96)
    with pytest.warns(UserWarning, match="valid for 64x96 inputs only"), torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
    with torch.no_grad():
        y = torch.randn(2, 3, 64, 96)
        assert all(torch.equal(a, b) for a, b in zip(traced(y), model(y)))
        with pytest.raises(RuntimeError, match="traced with 64x96 inputs and is valid for that size only, got 96x64"):
            traced(torch.randn(1, 3, 96, 64))


def test_init_cfg_other_than_pretrained_is_applied():
    """Any mmengine initialiser in init_cfg runs on top of the published init (it used to be ignored silently)."""
    constant = SOFT(arch="tiny", init_cfg=dict(type="Constant", val=0.5, layer="Linear", bias=0.25))
    constant.init_weights()
    linears = [m for m in constant.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(torch.all(m.weight == 0.5) and torch.all(m.bias == 0.25) for m in linears)
    as_list = SOFT(arch="tiny", init_cfg=[dict(type="Constant", val=0.0, layer="Conv2d")])
    as_list.init_weights()
    assert torch.all(as_list.stages[0].patch_embed[0].weight == 0)
    with pytest.raises(ValueError, match="not inside a list"):
        SOFT(arch="tiny", init_cfg=[dict(type="Pretrained", checkpoint="x.pth")]).init_weights()
