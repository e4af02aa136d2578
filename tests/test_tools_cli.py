"""Command-line behaviour of tools/train.py and tools/test.py that users hit first."""
import subprocess
import sys
from pathlib import Path

import pytest
from mmengine.config import Config

from mmsoft.utils import check_dataset_exists

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("config,expected", [
    ("configs/retinanet_soft_small.py", "data/coco/annotations/instances_train2017.json"),
    ("configs/upernet_soft_small_ade20k.py", "data/ade/ADEChallengeData2016"),
])
def test_missing_dataset_names_expected_path_and_demo(config, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # no data/ here
    cfg = Config.fromfile(ROOT / config)
    with pytest.raises(FileNotFoundError) as info:
        check_dataset_exists(cfg)
    msg = str(info.value)
    assert expected in msg
    assert "make_demo_data.py" in msg and "--cfg-options" in msg


def test_train_cli_exits_with_the_message(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "tools/train.py"), str(ROOT / "configs/retinanet_soft_small.py"),
                           "--work-dir", str(tmp_path / "w")], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode != 0
    assert "data/coco/annotations/instances_train2017.json" in proc.stderr
    assert "make_demo_data.py" in proc.stderr
    assert not (tmp_path / "w").exists() or not any((tmp_path / "w").rglob("*.pth"))


def test_dataset_present_passes(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/coco/annotations").mkdir(parents=True)
    (tmp_path / "data/coco/annotations/instances_train2017.json").write_text("{}")
    check_dataset_exists(Config.fromfile(ROOT / "configs/retinanet_soft_small.py"))
