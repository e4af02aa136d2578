"""Loading the reference SOFT / SOFT-Norm ImageNet checkpoints (fudan-zvg/SOFT, timm-style keys).

The checkpoints cannot be downloaded here, so the tests build state dicts with exactly the reference
models' parameter names and shapes, stored in ``data/soft_reference_params.json`` (dumped from the
reference code; its ``source`` field says how).
"""
import argparse
import json
import logging
import math
import os
import re
import subprocess
import sys
from collections import OrderedDict
from pathlib import Path

import pytest
import torch
from helpers.reference_weights import reference_layout_with_depths

from mmsoft.models import SOFT
from mmsoft.models.backbones import soft_converter
from mmsoft.models.backbones.soft_converter import resize_pos_embed, soft_convert

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = json.loads((Path(__file__).parent / "data" / "soft_reference_params.json").read_text())
DROPPED = {"head.weight", "head.bias"}
CLS_DROPPED = {"stages.3.cls_token", "stages.3.pos_embed[:, 0] (class-token slot)"}
HEAD_PARAMS = 512 * 1000 + 1000  # the ImageNet classifier
CLS_PARAMS = 512 + 512  # the class token and its position slot

# The name correspondence, stated independently of the converter's implementation.
_RENAMES = [(".att.mha.W_q.", ".attn.q."), (".att.mha.W_v.", ".attn.v."), (".att.mha.ff.", ".attn.proj."),
            (".att.mha.attn.Qlandmark_op.", ".attn.landmark_conv."),
            (".att.mha.attn.Qnorm_act.0.", ".attn.landmark_norm."), (".att.mha.attn.conv.", ".attn.v_conv."),
            (".att.norm1.", ".norm1."), (".att.norm2.", ".norm2."), (".att.ff1.", ".mlp.0."), (".att.ff2.", ".mlp.3."),
            (".mlp.fc1.", ".mlp.0."), (".mlp.fc2.", ".mlp.3.")]


def expected_name(ref: str) -> str:
    """mmsoft name of a reference parameter."""
    name = re.sub(r"^(patch_embed|pos_embed|block)(\d)", lambda m: f"{m[1]}{int(m[2]) - 1}", ref)
    name = re.sub(r"^patch_embed(\d)\.proj\.", r"stages.\1.patch_embed.", name)
    name = re.sub(r"^pos_embed(\d)$", r"stages.\1.pos_embed", name)
    name = re.sub(r"^block(\d)\.", r"stages.\1.blocks.", name)
    name = re.sub(r"^norm\.", "stages.3.norm.", name)
    for old, new in _RENAMES:
        name = name.replace(old, new)
    return name


def reference_state_dict(model: str = "soft_norm_tiny", seed: int = 0, device: str = "cpu") -> OrderedDict:
    """Random tensors with exactly the reference model's state_dict names and shapes."""
    gen = torch.Generator().manual_seed(seed)
    out = OrderedDict()
    for name, shape in FIXTURE["models"][model]["state_dict"].items():
        if device == "meta":
            out[name] = torch.empty(shape, device="meta")
        elif name.endswith("num_batches_tracked"):
            out[name] = torch.randint(1, 10**6, shape, generator=gen)
        elif name.endswith("running_var"):  # a variance: positive, so that a forward pass stays finite
            out[name] = torch.rand(shape, generator=gen) + 0.5
        else:
            out[name] = torch.randn(shape, generator=gen)
    return out


def timm_checkpoint(state: dict, ema: dict | None = None) -> dict:
    """What timm's CheckpointSaver (used by the reference's main.py) writes."""
    ckpt = {"epoch": 299, "arch": "soft_norm_tiny", "state_dict": state, "version": 2, "metric": 79.4,
            "args": argparse.Namespace(model="soft_norm_tiny", lr=1e-3, mean=None, model_ema=True)}
    if ema is not None:
        ckpt["state_dict_ema"] = ema
    return ckpt


@pytest.fixture
def logs(monkeypatch):
    """Messages the converter logs, as (level, text)."""
    records = []
    monkeypatch.setattr(soft_converter, "print_log",
                        lambda msg, logger=None, level=logging.INFO: records.append((level, msg)))
    return records


def assert_loaded_from(model: SOFT, src: dict) -> None:
    """Every parameter and buffer of ``model`` equals its reference tensor (with ``with_cls_token=False``: no class
    token, pos_embed4 without its slot)."""
    state = model.state_dict()
    expected = {expected_name(k): v for k, v in src.items() if k not in ("head.weight", "head.bias", "cls_token")}
    if model.with_cls_token:
        expected["stages.3.cls_token"] = src["cls_token"]
    else:
        expected["stages.3.pos_embed"] = src["pos_embed4"][:, 1:]
    assert set(state) == set(expected)
    for name, value in state.items():
        assert torch.equal(value, expected[name]), name


@pytest.mark.parametrize("model_name", list(FIXTURE["models"]))
def test_fixture_describes_the_same_architecture(model_name):
    entry = FIXTURE["models"][model_name]
    for with_cls_token in (True, False):
        model = SOFT(arch=entry["mmsoft_arch"], with_cls_token=with_cls_token)
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        converted = soft_convert(reference_state_dict(model_name, device="meta"), with_cls_token=with_cls_token)
        assert {k: tuple(v.shape) for k, v in converted.items()} == ours
        assert set(converted.dropped) == DROPPED | (set() if with_cls_token else CLS_DROPPED)
        assert not converted.unexpected
    assert all(expected_name(k) in ours for k in entry["state_dict"] if not k.startswith(("head.", "cls_token")))
    # the ImageNet model = our backbone (with its class token) + head; published 13M / 45M
    ref_params = sum(math.prod(s) for k, s in entry["state_dict"].items()
                     if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert ref_params == entry["num_params"]
    assert sum(p.numel() for p in model.parameters()) + HEAD_PARAMS + CLS_PARAMS == entry["num_params"]
    assert math.floor(entry["num_params"] / 1e6) == {"tiny": 13, "medium": 45}[entry["mmsoft_arch"]]


@pytest.mark.parametrize("wrap", ["bare", "state_dict+module", "model", "timm_ema", "backbone"])
def test_convert_fills_every_parameter_and_buffer(wrap):
    src = reference_state_dict()
    if wrap == "bare":
        ckpt = src
    elif wrap == "state_dict+module":
        ckpt = {"state_dict": OrderedDict(("module." + k, v) for k, v in src.items()), "meta": {"epoch": 3}}
    elif wrap == "model":
        ckpt = {"model": src, "optimizer": {"state": {}}}
    elif wrap == "timm_ema":  # the EMA weights are the ones the reference evaluates
        ckpt = timm_checkpoint(reference_state_dict(seed=1), ema=src)
    else:
        ckpt = {"state_dict": {**{"backbone." + k: v for k, v in src.items()}, "neck.fc.weight": torch.ones(2)}}
    converted = soft_convert(ckpt)
    model = SOFT(arch="tiny", with_cls_token=True)
    result = model.load_state_dict(converted, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert_loaded_from(model, src)
    assert set(converted.dropped) == DROPPED | ({"neck.fc.weight"} if wrap == "backbone" else set())
    assert converted.unexpected == [] and converted.reference_keys == len(src) - 2


def test_use_ema_false_takes_the_raw_weights():
    raw, ema = reference_state_dict(seed=1), reference_state_dict(seed=2)
    converted = soft_convert(timm_checkpoint(raw, ema=ema), use_ema=False)
    assert torch.equal(converted["stages.0.pos_embed"], raw["pos_embed1"])


def test_init_cfg_pretrained_loads_a_reference_file(tmp_path, logs):
    src = reference_state_dict()
    path = tmp_path / "SOFT_Tiny_norm.pth.tar"
    torch.save(timm_checkpoint(reference_state_dict(seed=1), ema=src), path)
    model = SOFT(arch="tiny", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    model.init_weights()
    assert_loaded_from(model, src)
    text = "\n".join(msg for _, msg in logs)
    assert "reference SOFT format" in text and str(path) in text
    # the drops are logged, not silent: the classifier, and the class token this backbone does not have
    assert "stages.3.cls_token (the backbone has with_cls_token=False)" in text and "head.weight" in text
    assert all(level < logging.WARNING for level, _ in logs)
    with_cls = SOFT(arch="tiny", with_cls_token=True, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with_cls.init_weights()
    assert_loaded_from(with_cls, src)
    with torch.no_grad():
        outs = model.eval()(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [64, 128, 320, 512] and all(torch.isfinite(o).all() for o in outs)


def test_pos_embeds_resized_to_another_pretrain_img_size(tmp_path, logs):
    src = reference_state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": src}, path)
    model = SOFT(arch="tiny", pretrain_img_size=384, init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    model.init_weights()
    for i, (grid, ref) in enumerate(zip((96, 48, 24, 12), ("pos_embed1", "pos_embed2", "pos_embed3", "pos_embed4"))):
        pos = model.stages[i].pos_embed
        assert pos.shape == (1, grid * grid, model.embed_dims[i])
        src_pos = src[ref][:, 1:] if i == 3 else src[ref]
        torch.testing.assert_close(pos.data, resize_pos_embed(src_pos, 224 // (4 * 2**i), grid))
    assert "stages.0.pos_embed 56x56 -> 96x96" in "\n".join(msg for _, msg in logs)
    # everything else is loaded unchanged
    torch.testing.assert_close(model.stages[2].blocks[1].attn.q.weight.data, src["block3.1.att.mha.W_q.weight"])


def test_resize_pos_embed_is_bilinear_without_corner_alignment():
    # columns 0 and 1 of a 2x2 grid, in every channel; row-major token order
    pos = torch.tensor([0.0, 1.0, 0.0, 1.0]).view(1, 4, 1).repeat(1, 1, 3)
    out = resize_pos_embed(pos, 2, (2, 4))
    assert out.shape == (1, 8, 3)
    torch.testing.assert_close(out[0, :4, 0], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    torch.testing.assert_close(out[0, 4:, 1], torch.tensor([0.0, 0.25, 0.75, 1.0]))
    assert resize_pos_embed(pos, 2, 2) is pos
    with pytest.raises(ValueError, match="does not hold a 3x3 grid"):
        resize_pos_embed(pos, 3, 4)


@pytest.mark.parametrize("key", ["block1.0.att.mha.W_k.weight", "block4.0.attn.sr.weight", "fc.weight"])
def test_unknown_key_raises_a_clear_error(key, tmp_path, logs):
    src = reference_state_dict(device="meta")
    src[key] = torch.empty(4, 4, device="meta")
    with pytest.raises(ValueError, match=re.escape(f"unknown key {key!r}") + ".*strict=False"):
        soft_convert(src)
    converted = soft_convert(src, strict=False)
    assert converted.unexpected == [key] and key not in converted
    # via init_cfg it is an error, unless the user allows it explicitly; then it is reported
    real = reference_state_dict()
    real[key] = torch.zeros(4, 4)
    path = tmp_path / "ckpt.pth"
    torch.save(real, path)
    model = SOFT(arch="tiny", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(ValueError, match=re.escape(f"unexpected keys (1): {key}") + ".*strict=False"):
        model.init_weights()
    model = SOFT(arch="tiny", init_cfg=dict(type="Pretrained", checkpoint=str(path), strict=False))
    model.init_weights()
    warnings = [msg for level, msg in logs if level >= logging.WARNING]
    assert len(warnings) == 1 and f"unexpected keys (1): {key}" in warnings[0] and "missing keys (0)" in warnings[0]
    assert_loaded_from(model, reference_state_dict())


def test_mmsoft_checkpoint_passes_through(tmp_path, logs):
    torch.manual_seed(0)
    trained = SOFT(arch="tiny")
    trained.init_weights()
    state = trained.state_dict()
    detector = {"meta": {"epoch": 12}, "state_dict": {**{"backbone." + k: v for k, v in state.items()},
                                                        "neck.lateral_convs.0.conv.weight": torch.ones(3)}}
    converted = soft_convert(detector)
    assert list(converted) == list(state) and converted.reference_keys == 0
    assert converted.dropped == ["neck.lateral_convs.0.conv.weight"]
    path = tmp_path / "retinanet.pth"
    torch.save(detector, path)
    model = SOFT(arch="tiny", init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone."))
    model.init_weights()
    for name, value in model.state_dict().items():
        assert torch.equal(value, state[name]), name
    assert "mmsoft format" in logs[0][1]


def test_wrong_arch_and_prefix_errors(tmp_path, logs):
    path = tmp_path / "ckpt.pth"
    torch.save(reference_state_dict(), path)
    narrow = SOFT(arch=dict(embed_dims=[64, 128, 256, 512], num_heads=[2, 4, 8, 16], depths=[1, 2, 3, 2]),
                  init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(ValueError, match="shape mismatches.*embed_dims \\[64, 128, 320, 512\\].*build it with "
                                         "arch='tiny'"):
        narrow.init_weights()
    with pytest.raises(ValueError, match="no key of the checkpoint starts with prefix 'backbone.'"):
        SOFT(arch="tiny", init_cfg=dict(type="Pretrained", checkpoint=str(path), prefix="backbone")).init_weights()
    # deeper than the checkpoint: the blocks it lacks are an error that names the arch that fits
    deeper = SOFT(arch=dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16], depths=[1, 2, 4, 2]),
                  init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(ValueError, match=re.escape("missing keys (18): stages.2.blocks.3.attn.q.weight") +
                       ".*depths \\[1, 2, 3, 2\\].*build it with arch='tiny'"):
        deeper.init_weights()


def test_reference_small_preset_is_not_silently_truncated(tmp_path):
    """The reference code's ``soft_small`` preset has 20 stage-3 blocks; mmsoft's 'small' (the published 24M model)
    has 7. Loading one into the other names the depths and the arch that would fit."""
    path = tmp_path / "soft_small_reference.pth"
    torch.save({k: torch.zeros(v) for k, v in reference_layout_with_depths([1, 3, 20, 4]).items()}, path)
    small = SOFT(arch="small", init_cfg=dict(type="Pretrained", checkpoint=str(path)))
    with pytest.raises(ValueError, match=re.escape("unexpected keys (") + ".*stages.2.blocks.7.*" +
                       re.escape("depths [1, 3, 20, 4]") + ".*" +
                       re.escape("arch=dict(embed_dims=[64, 128, 320, 512], num_heads=[2, 4, 10, 16], "
                                 "depths=[1, 3, 20, 4])")):
        small.init_weights()


def test_converter_script(tmp_path):
    src = reference_state_dict()
    src_path, dst_path = tmp_path / "SOFT_Tiny_norm.pth.tar", tmp_path / "soft-t-norm_mmsoft.pth"
    torch.save(timm_checkpoint(reference_state_dict(seed=1), ema=src), src_path)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, str(ROOT / "tools/model_converters/soft2mmsoft.py"), str(src_path),
                           str(dst_path)], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "converted 185 reference keys, passed through 0 mmsoft keys, dropped 2" in proc.stdout
    state = torch.load(dst_path, map_location="cpu")  # weights_only: a plain state dict
    model = SOFT(arch="tiny", with_cls_token=True)
    model.load_state_dict(state, strict=True)
    assert_loaded_from(model, src)


def test_seeded_small_weights_fit_mmsoft_small():
    """The derived SOFT-Small layout (the benchmarks' realistic SOFT-S weights) loads strictly into arch='small'."""
    from helpers.reference_weights import seeded_reference_state_dict

    state = soft_convert(seeded_reference_state_dict("soft_norm_small", 0, torch.float32), with_cls_token=False)
    model = SOFT(arch="small")
    model.load_state_dict(state, strict=True)
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(23.5e6, rel=0.05)
