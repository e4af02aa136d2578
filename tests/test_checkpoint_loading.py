"""Checkpoints of mmsoft training runs: readable by the APIs users know, loaded only weights-only by every mmsoft
entry point whatever the environment says, and refused (naming the file and the damage) when damaged or not fitting.

Every entry point runs in a fresh interpreter: what matters is what ``import mmsoft`` / the tools set up, not what
this test process has already imported.
"""
from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers.demo_checkpoints import DET_CONFIG, SEG_CONFIG, demo_checkpoints, demo_options
from helpers.run_configs import PYTHON, ROOT, subprocess_env

from mmsoft.checkpoint import CheckpointError, load_checkpoint_safely
from mmsoft.models import SOFT
from mmsoft.utils import check_checkpoint_fits

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """Demo data and a 1-iteration detection and segmentation checkpoint written by tools/train.py."""
    return demo_checkpoints(tmp_path_factory.mktemp('ckpt'))


def _run(cmd: list[str], env_extra: dict[str, str] | None = None, timeout: int = 120) -> subprocess.CompletedProcess:
    env = subprocess_env()
    env.update(env_extra or {})
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------------------ A: user APIs
LOAD_WITH_API = """
import json, sys
import torch
api, config, ckpt, first = sys.argv[1:5]
if first == 'import-mmsoft':
    import mmsoft  # noqa: F401
if api == 'init_detector':
    from mmdet.apis import init_detector
    model = init_detector(config, ckpt, device='cpu')
elif api == 'DetInferencer':
    from mmdet.apis import DetInferencer
    model = DetInferencer(model=config, weights=ckpt, device='cpu', show_progress=False).model
elif api == 'init_model':
    from mmseg.apis import init_model
    model = init_model(config, ckpt, device='cpu')
else:  # mmengine's load_checkpoint into a model built from the config
    from mmengine.config import Config
    from mmengine.registry import MODELS, init_default_scope
    from mmengine.runner import load_checkpoint
    cfg = Config.fromfile(config)
    init_default_scope(cfg.default_scope)
    model = MODELS.build(cfg.model)
    load_checkpoint(model, ckpt, map_location='cpu')
saved = torch.load(ckpt, map_location='cpu', weights_only=True)['state_dict']
state = model.state_dict()
print(json.dumps(dict(equal=sum(torch.equal(state[k], v) for k, v in saved.items()), total=len(saved))))
"""


def _locations_only_config(tmp: Path, base: Path) -> Path:
    """``base`` without ``custom_imports``: mmsoft is imported only by the registry, for ``type='mmsoft.SOFT'``."""
    path = tmp / f"locations_{base.name}"
    path.write_text(f"_base_ = {str(base)!r}\ncustom_imports = dict(imports=[], allow_failed_imports=False)\n")
    return path


@pytest.mark.parametrize("api,kind,config_kind,first", [
    ("init_detector", "det", "shipped", ""),
    ("DetInferencer", "det", "shipped", ""),
    ("load_checkpoint", "det", "shipped", ""),
    ("init_model", "seg", "shipped", ""),
    ("init_detector", "det", "locations", ""),
    ("init_model", "seg", "locations", ""),
    ("load_checkpoint", "det", "locations", ""),
    # DetInferencer reads the weights before it builds the model: mmsoft must be imported first
    ("DetInferencer", "det", "locations", "import-mmsoft"),
])
def test_user_apis_load_mmsoft_checkpoints(demo, api, kind, config_kind, first):
    config = DET_CONFIG if kind == "det" else SEG_CONFIG
    if config_kind == "locations":
        config = _locations_only_config(demo["tmp"], config)
    proc = _run([PYTHON, "-c", LOAD_WITH_API, api, str(config), str(demo[kind]), first or "-"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["total"] > 100 and result["equal"] == result["total"], result  # every tensor is the checkpoint's


def test_import_mmsoft_lets_torch_default_load_read_checkpoints(demo):
    code = ("import sys, torch, mmsoft\nc = torch.load(sys.argv[1], map_location='cpu')\n"
            "print(type(c['message_hub']['log_scalars']['train/loss']).__name__)")
    proc = _run([PYTHON, "-c", code, str(demo["det"])])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "HistoryBuffer"


# ----------------------------------------------------------------------------- B: never unpickle code
class _Payload:
    """Unpickles as ``open(marker, 'w')``: a file appearing proves the checkpoint ran code."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


@pytest.fixture(scope="module")
def evil(demo):
    """A detection checkpoint with a payload, and the marker file the payload would create."""
    marker = demo["tmp"] / "payload_ran"
    ckpt = torch.load(demo["det"], map_location="cpu", weights_only=True)
    path = demo["tmp"] / "evil.pth"
    torch.save(dict(ckpt, payload=_Payload(marker)), path)
    return path, marker


NO_WEIGHTS_ONLY = {"TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"}


def test_payload_runs_under_plain_torch_load_with_the_variable(demo, tmp_path):
    # the control: the environment variable does switch torch's default off, and the payload is real
    marker = tmp_path / "control_ran"
    ckpt = torch.load(demo["det"], map_location="cpu", weights_only=True)
    torch.save(dict(ckpt, payload=_Payload(marker)), tmp_path / "control.pth")
    proc = _run([PYTHON, "-c", "import sys, torch; torch.load(sys.argv[1])", str(tmp_path / "control.pth")],
                NO_WEIGHTS_ONLY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert marker.exists()


def _entry_points(demo, path: Path, tmp: Path) -> dict[str, list[str]]:
    det_opts = demo_options("det", demo["data"])
    image = str(demo["data"] / "coco/val/000000.png")
    bench = ("import sys; from pathlib import Path\n"
             "sys.path.insert(0, 'tools/analysis')  # what running the script does: its folder first\n"
             "import benchmark_backbone as mod\n"
             "mod.DEMO_CKPT = Path(sys.argv[1]); mod._demo_backbone('cpu')")
    return {
        "init_cfg Pretrained": [PYTHON, "-c", "import sys; from mmsoft.models import SOFT; SOFT(arch='tiny', "
                                "init_cfg=dict(type='Pretrained', checkpoint=sys.argv[1])).init_weights()", str(path)],
        "tools/test.py": [PYTHON, "tools/test.py", str(DET_CONFIG), str(path), "--work-dir", str(tmp / "test"),
                          "--cfg-options", *det_opts],
        "tools/train.py --resume": [PYTHON, "tools/train.py", str(DET_CONFIG), "--resume", str(path), "--work-dir",
                                    str(tmp / "resume"), "--cfg-options", "train_cfg.max_iters=2", *det_opts],
        "tools/train.py load_from": [PYTHON, "tools/train.py", str(DET_CONFIG), "--work-dir", str(tmp / "load"),
                                     "--cfg-options", f"load_from={path}", "train_cfg.max_iters=1", *det_opts],
        "soft2mmsoft.py": [PYTHON, "tools/model_converters/soft2mmsoft.py", str(path), str(tmp / "converted.pth")],
        "image_demo.py": [PYTHON, "tools/demo/image_demo.py", image, str(DET_CONFIG), str(path), "--out-dir",
                          str(tmp / "vis")],
        "benchmark_backbone.py": [PYTHON, "-c", bench, str(path)],
    }


ENTRY_POINTS = ["init_cfg Pretrained", "tools/test.py", "tools/train.py --resume", "tools/train.py load_from",
                "soft2mmsoft.py", "image_demo.py", "benchmark_backbone.py"]


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_every_entry_point_refuses_a_payload_despite_the_variable(demo, evil, entry, tmp_path):
    path, marker = evil
    proc = _run(_entry_points(demo, path, tmp_path)[entry], NO_WEIGHTS_ONLY)
    out = proc.stdout + proc.stderr
    assert not marker.exists(), f"{entry} ran the checkpoint's code"
    assert proc.returncode != 0, out[-3000:]
    assert "refused by weights-only loading" in out and str(path) in out, out[-3000:]
    assert not list(tmp_path.rglob("*.pth")) and not list(tmp_path.rglob("*_pred.png"))  # nothing was produced


@pytest.fixture
def fake_scheme(monkeypatch):
    """A ``fake://`` mmengine scheme whose loader calls ``torch.load`` without ``weights_only``, as mmengine's URL
    loaders do; registered on a copy of the scheme table, restored afterwards."""
    from collections import OrderedDict

    from mmengine.runner import CheckpointLoader

    monkeypatch.setattr(CheckpointLoader, "_schemes", OrderedDict(CheckpointLoader._schemes))

    def load_from_fake(filename, map_location=None):
        return torch.load(filename[len("fake://"):], map_location=map_location)

    CheckpointLoader.register_scheme("fake://", load_from_fake)
    return CheckpointLoader


def test_remote_schemes_are_forced_weights_only(evil, fake_scheme, monkeypatch):
    path, marker = evil
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointError, match="refused by weights-only loading"):
        load_checkpoint_safely(f"fake://{path}")
    assert not marker.exists()


def test_tools_route_every_scheme_through_the_checks(demo, evil, fake_scheme, monkeypatch):
    from mmsoft.checkpoint import use_safe_checkpoint_loading

    path, marker = evil
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    use_safe_checkpoint_loading()
    with pytest.raises(CheckpointError, match="refused by weights-only loading"):
        fake_scheme.load_checkpoint(f"fake://{path}")
    with pytest.raises(CheckpointError, match="refused by weights-only loading"):
        fake_scheme.load_checkpoint(str(path))
    assert not marker.exists()
    assert fake_scheme.load_checkpoint(f"fake://{demo['det']}")["meta"]["iter"] == 1  # good files still load
    use_safe_checkpoint_loading()  # idempotent: no double wrapping
    assert getattr(fake_scheme._schemes["fake://"], "_mmsoft_safe", False)


def test_explicit_unsafe_load_inside_the_forced_block_is_refused(demo):
    from mmsoft.checkpoint import forced_weights_only

    with forced_weights_only(), pytest.raises(CheckpointError, match="only with weights_only=True"):
        torch.load(demo["det"], weights_only=False)
    assert torch.load(demo["det"], weights_only=False)["meta"]["iter"] == 1  # torch.load is restored afterwards


# ------------------------------------------------------------------------- C: damaged / unfitting files
def _backbone_weight(state: dict) -> str:
    return next(k for k, v in state.items() if k.startswith("backbone.") and v.dim() == 2 and v.numel() >= 4096)


def _flip_exponents(raw: bytes) -> bytes:
    """Flip the top exponent bit of 64 little-endian float32 values (~0.02 -> ~7e36)."""
    return (np.frombuffer(raw, dtype="<u4") ^ np.uint32(1 << 30)).astype("<u4").tobytes()


@pytest.fixture(scope="module")
def damaged(demo):
    """Damaged and unfitting variants of the detection checkpoint, by name."""
    tmp, det = demo["tmp"], demo["det"]
    blob = det.read_bytes()
    ckpt = torch.load(det, map_location="cpu", weights_only=True)
    key = _backbone_weight(ckpt["state_dict"])
    raw = ckpt["state_dict"][key].contiguous().numpy().tobytes()[:256]
    assert blob.count(raw) == 1
    files = {}
    # one flipped exponent bit in 64 floats of a backbone weight, in the file: the zip record's CRC no longer matches
    files["bit flips in the file"] = tmp / "bitflip.pth"
    files["bit flips in the file"].write_bytes(blob.replace(raw, _flip_exponents(raw)))
    # the same values corrupted before saving: the CRC is right, the values are absurd
    bad = dict(ckpt, state_dict=dict(ckpt["state_dict"]))
    flat = bad["state_dict"][key].clone().flatten()
    flat[:64] = torch.from_numpy(np.frombuffer(_flip_exponents(raw), dtype="<f4").copy())
    bad["state_dict"][key] = flat.view_as(ckpt["state_dict"][key])
    files["corrupted before saving"] = tmp / "bad_values.pth"
    torch.save(bad, files["corrupted before saving"])
    files["truncated"] = tmp / "truncated.pth"
    files["truncated"].write_bytes(blob[: len(blob) // 2])
    files["html page"] = tmp / "page.pth"
    files["html page"].write_bytes(b"<!DOCTYPE html><html><body>404 Not Found</body></html>")
    files["git lfs pointer"] = tmp / "pointer.pth"
    files["git lfs pointer"].write_bytes(b"version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 1\n")
    files["empty"] = tmp / "empty.pth"
    files["empty"].write_bytes(b"")
    no_backbone = dict(ckpt, state_dict={k: v for k, v in ckpt["state_dict"].items() if not k.startswith("backbone.")})
    files["no backbone"] = tmp / "no_backbone.pth"
    torch.save(no_backbone, files["no backbone"])
    return files, key


@pytest.mark.parametrize("name,expected", [
    ("bit flips in the file", "fails verification"),
    ("corrupted before saving", "values have magnitude >= 1e+30"),
    ("truncated", "truncated or damaged"),
    ("html page", "HTML/XML page"),
    ("git lfs pointer", "Git LFS pointer"),
    ("empty", "is empty"),
])
def test_damaged_files_are_refused_naming_file_and_damage(damaged, name, expected):
    files, key = damaged
    with pytest.raises(CheckpointError) as info:
        load_checkpoint_safely(str(files[name]))
    msg = str(info.value)
    assert str(files[name]) in msg and expected in msg, msg
    if name == "bit flips in the file":
        assert "data/" in msg  # the zip record
    if name == "corrupted before saving":
        assert key in msg and "64 of" in msg


def test_values_check_counts_non_finite(tmp_path):
    path = tmp_path / "nan.pth"
    torch.save({"state_dict": {"w": torch.tensor([1.0, float("nan"), float("inf")])}}, path)
    with pytest.raises(CheckpointError, match=r"state_dict\.w: 2 of 3 values are NaN/inf"):
        load_checkpoint_safely(str(path))


@pytest.mark.parametrize("how", ["legacy format", "no CRC"])
def test_files_without_crc_still_load(tmp_path, how):
    state = {"state_dict": {"w": torch.arange(6.0)}}
    path = tmp_path / "ckpt.pth"
    if how == "legacy format":
        torch.save(state, path, _use_new_zipfile_serialization=False)
        assert not zipfile.is_zipfile(path)
    else:
        torch.serialization.set_crc32_options(False)
        try:
            torch.save(state, path)
        finally:
            torch.serialization.set_crc32_options(True)
        with zipfile.ZipFile(path) as archive:
            assert all(info.CRC == 0 for info in archive.infolist() if info.file_size)
    assert torch.equal(load_checkpoint_safely(str(path))["state_dict"]["w"], torch.arange(6.0))


def test_pretrained_init_cfg_refuses_a_corrupted_file(damaged):
    files, _ = damaged
    model = SOFT(arch="tiny", init_cfg=dict(type="Pretrained", checkpoint=str(files["bit flips in the file"]),
                                            prefix="backbone."))
    with pytest.raises(CheckpointError, match="fails verification"):
        model.init_weights()


def test_test_tool_refuses_a_corrupted_checkpoint(demo, damaged, tmp_path):
    files, _ = damaged
    path = files["bit flips in the file"]
    proc = _run([PYTHON, "tools/test.py", str(DET_CONFIG), str(path), "--work-dir", str(tmp_path),
                 "--cfg-options", *demo_options("det", demo["data"])])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and f"error: checkpoint {path} is corrupted: zip record" in out, out[-3000:]
    assert "results of the whole dataset is empty" not in out


@pytest.mark.parametrize("tool", ["tools/test.py", "image_demo.py", "tools/train.py load_from"])
def test_tools_refuse_a_checkpoint_without_backbone(demo, damaged, tool, tmp_path):
    files, _ = damaged
    path = files["no backbone"]
    proc = _run(_entry_points(demo, path, tmp_path)[tool])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert f"checkpoint {path} does not fit" in out and "lacks" in out and "backbone: all" in out, out[-3000:]
    assert not list(tmp_path.rglob("*.pth")) and not list(tmp_path.rglob("*_pred.png"))


def test_test_tool_refuses_a_checkpoint_of_another_model(demo, tmp_path):
    proc = _run([PYTHON, "tools/test.py", str(DET_CONFIG), str(demo["seg"]), "--work-dir", str(tmp_path),
                 "--cfg-options", *demo_options("det", demo["data"])])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]
    assert "does not fit the model RetinaNet" in out and "neck: all" in out and "bbox_head: all" in out, out[-3000:]


def test_test_tool_evaluates_a_fitting_checkpoint(demo, tmp_path):
    # the strict checks do not get in the way of the real thing (after 1 iteration every score is ~0.01: keep all)
    cmd = [PYTHON, "tools/test.py", str(DET_CONFIG), str(demo["det"]), "--work-dir", str(tmp_path),
           "--cfg-options", *demo_options("det", demo["data"])]
    proc = _run([*cmd, "model.test_cfg.score_thr=0.0"])
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    assert "coco/bbox_mAP" in proc.stdout + proc.stderr
    # with mmdet's default threshold nothing is left to evaluate: an error, not exit 0 without metrics
    proc = _run(cmd)
    assert proc.returncode != 0 and "produced no metrics" in proc.stderr, (proc.stdout + proc.stderr)[-3000:]


def test_shape_mismatch_names_the_input_channels(demo):
    ckpt = torch.load(demo["det"], map_location="cpu", weights_only=True)
    state = {k[len("backbone."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("backbone.")}
    gray = SOFT(arch="tiny", in_channels=1, init_cfg=None)
    with pytest.raises(CheckpointError) as info:
        check_checkpoint_fits(gray, {"state_dict": state}, "rgb.pth")
    msg = str(info.value)
    assert "trained on 3-channel images, the model takes 1" in msg and "in_channels=3" in msg, msg
    check_checkpoint_fits(SOFT(arch="tiny", init_cfg=None), {"state_dict": state}, "rgb.pth")  # the right model fits
