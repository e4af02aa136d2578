"""Models with other than three input channels (grayscale: 1, multispectral: any): the tools build inputs with the
model's channels, and a data preprocessor or checkpoint made for other channels is named with the value that fits."""
from pathlib import Path

import pytest
from helpers.tool_modules import load_tool
from mmengine.config import Config
from mmengine.registry import MODELS, init_default_scope

from mmsoft.models import SOFT
from mmsoft.utils import check_backbone_channels, model_input_channels, prepare_scope

ROOT = Path(__file__).resolve().parents[1]
DET_DEMO = ROOT / "configs/demo/retinanet_soft-t-norm_fpn_demo.py"


def _channel_options(channels: int) -> list[str]:
    # mmengine's preprocessors take 1 or 3 mean / std values: one value serves any number of channels
    return ["--cfg-options", f"model.backbone.in_channels={channels}", "model.data_preprocessor.mean=[128.0]",
            "model.data_preprocessor.std=[64.0]"]


def test_get_flops_feeds_the_model_its_channels(capsys):
    tool = load_tool("tools/analysis/get_flops.py")
    flops = {}
    for channels in (1, 2, 4):
        result = tool.main([str(DET_DEMO), "--shape", "64", *_channel_options(channels)])
        assert result["in_channels"] == channels
        assert f"Input shape: ({channels}, 64, 64)" in capsys.readouterr().out
        flops[channels] = result["flops"]
    # only the stem's first convolution reads the input: its cost grows linearly with the channels
    assert flops[2] > flops[1]
    assert flops[4] - flops[1] == 3 * (flops[2] - flops[1])


def _model(cfg_options: dict):
    cfg = Config.fromfile(DET_DEMO)
    cfg.merge_from_dict(cfg_options)
    init_default_scope(prepare_scope(cfg))
    return MODELS.build(cfg.model)


def test_preprocessor_with_other_channels_is_named():
    model = _model({"model.backbone.in_channels": 1})  # mean / std still the RGB ones
    assert model_input_channels(model) == 1
    with pytest.raises(ValueError) as info:
        check_backbone_channels(model)
    msg = str(info.value)
    assert "data_preprocessor mean has 3 values" in msg and "in_channels=1" in msg
    assert "set data_preprocessor.mean to 1 value and LoadImageFromFile color_type='grayscale'" in msg
    check_backbone_channels(_model({"model.backbone.in_channels": 1, "model.data_preprocessor.mean": [128.0],
                                    "model.data_preprocessor.std": [64.0]}))  # a fitting one passes


def test_model_input_channels_of_a_bare_backbone():
    assert model_input_channels(SOFT(arch="tiny", in_channels=4, init_cfg=None)) == 4


def test_model_input_channels_of_other_backbones_from_their_stem():
    from mmdet.models.backbones import ResNet

    assert model_input_channels(ResNet(depth=18, in_channels=1)) == 1
    assert model_input_channels(ResNet(depth=18)) == 3
