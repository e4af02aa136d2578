"""tools/analysis/benchmark_backbone.py: argument parsing, config resolution, report formatting and the landmark
solver's profiler ranges (no timing of whole cases: one real case takes tens of seconds on a CPU;
tools/analysis/benchmark_backbone.py --help documents how it measures). The tool is imported as pytest finds it,
through ``pythonpath`` in pyproject.toml."""
import argparse

import benchmark_backbone as bb
import pytest

from mmsoft.ops.landmark_solvers import SOLVERS


def test_parse_size_and_defaults():
    assert bb.parse_size("800x1333") == (800, 1333)
    with pytest.raises(argparse.ArgumentTypeError):
        bb.parse_size("800")
    args = bb.parse_args([])
    assert args.sizes == [(512, 512), (800, 1333), (1024, 2048)]
    assert args.models == ["soft-t", "soft-s", "pvt-t", "pvtv2-b1", "swin-t"]
    assert "newton" in args.solvers and "cholesky" in args.solvers


def test_every_model_config_loads_with_a_backbone():
    for name in bb.MODEL_CONFIGS:
        cfg = bb.load_model_config(name)
        assert cfg.model.backbone.type.endswith(("SOFT", "PyramidVisionTransformer", "PyramidVisionTransformerV2",
                                                 "SwinTransformer")), name


def test_markdown_table_marks_missing_and_failed_cells():
    base = {"mode": "forward", "what": "detector", "peak_bytes": 2**20, "params_m": 22.8, "solver_share": 0.5}
    results = [{**base, "model": "soft-t", "solver": "newton", "size": [512, 512], "best_s": 1.5},
               {**base, "model": "soft-t", "solver": "newton", "size": [800, 1333], "error": "timeout after 10 s"},
               {**base, "model": "pvt-t", "solver": "-", "size": [512, 512], "best_s": 0.25}]
    table = bb.markdown_table(results, [(512, 512), (800, 1333)], "forward")
    lines = table.splitlines()
    assert lines[2].startswith("| soft-t (newton) | 22.8 | 1.50 | 1 | 50 | timeout after 10 s")
    assert lines[3] == "| pvt-t | 22.8 | 0.25 | 1 | - | not run | - | - |"


def test_accuracy_table_reports_both_references():
    def entry(vs_newton, vs_exact):
        return {"vs_newton": {"max_abs": vs_newton, "rel": vs_newton},
                "vs_exact": {"max_abs": vs_exact, "rel": vs_exact}}
    acc = {"weights": "w", "images": ["a.png"], "input": "800x1333",
           "per_layer": {"newton": [entry(0.0, 2e-6), entry(0.0, 5e-6)], "newton_eigh": [entry(4e-6, 1e-6)]},
           "backbone_outputs": {"newton": [entry(0.0, 3e-6)], "newton_eigh": [entry(3e-6, 7e-7)]}}
    lines = bb.accuracy_table(acc).splitlines()
    assert lines[-2] == "| newton | 0 | 5e-06 | 0 | 3e-06 |"
    assert lines[-1] == "| newton_eigh | 4e-06 | 1e-06 | 3e-06 | 7e-07 |"


@pytest.mark.parametrize("solver", SOLVERS)
def test_solver_share_sees_every_solver(solver):
    import torch

    from mmsoft.ops import soft_attention

    q, k, v = torch.randn(2, 40, 8), torch.randn(2, 10, 8) * 0.5, torch.randn(2, 40, 8)
    share = bb.solver_share(lambda: soft_attention(q, k, v, impl="reference", solver=solver), cuda=False)
    assert 0 < share["solver_s"] <= share["solver_run_s"]
    assert 0 < share["solver_share"] <= 1


def test_plot_writes_a_png(tmp_path):
    base = {"what": "detector", "peak_bytes": 2**20, "params_m": 22.8, "solver_share": 0.5}
    results = [{**base, "model": "soft-t", "solver": "newton", "mode": "forward", "size": [h, h], "best_s": h / 100}
               for h in (256, 512)]
    bb.plot(results, ["forward"], tmp_path / "latency.png", "title")
    assert (tmp_path / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name", ["swin-t", "soft-t"])
def test_build_backbone_returns_module_in_eval_mode(name):
    # mmdet's SwinTransformer.train() returns None: the tool must not return model.eval()'s result
    model = bb.build_model(name, "newton_eigh", "backbone")
    assert model is not None and not model.training
    if name == "soft-t":
        assert {m.landmark_solver for m in model.modules() if hasattr(m, "landmark_solver")} == {"newton_eigh"}


def test_no_solve_skips_only_the_landmark_solve():
    # the lower-bound row: the same model with P x = x, so no time in the solver and a different (meaningless) output
    import torch

    assert bb.parse_args(["--solvers", bb.NO_SOLVE]).solvers == [bb.NO_SOLVE]
    real = bb.build_model("soft-t", "newton", "backbone")
    x = torch.randn(1, 3, 64, 64)
    try:  # the tool registers the pseudo-solver in its worker process only: undo it for the other tests
        floor = bb.build_model("soft-t", bb.NO_SOLVE, "backbone")
        floor.load_state_dict(real.state_dict())
        with torch.no_grad():
            share = bb.solver_share(lambda: floor(x), cuda=False)
            out_floor, out_real = floor(x), real(x)
    finally:
        SOLVERS.pop(bb.NO_SOLVE, None)
    assert share["solver_s"] == 0
    assert all(a.shape == b.shape for a, b in zip(out_floor, out_real))
    assert not torch.allclose(out_floor[0], out_real[0])


def test_soft_checkpoint_option_loads_the_weights(tmp_path):
    import torch
    from helpers.reference_weights import seeded_reference_state_dict

    from mmsoft.models.backbones.soft_converter import soft_convert

    path = tmp_path / "soft_t.pth"
    torch.save(seeded_reference_state_dict("soft_norm_tiny", 0, torch.float32), path)
    args = bb.parse_args(["--soft-checkpoint", f"soft-t={path}"])
    assert args.soft_checkpoint == {"soft-t": str(path)}
    for bad in ("pvt-t=" + str(path), f"soft-t={tmp_path / 'missing.pth'}", str(path)):
        with pytest.raises(SystemExit):
            bb.parse_args(["--soft-checkpoint", bad])
    model = bb.build_model("soft-t", "newton", "backbone", str(path))
    expected = soft_convert(seeded_reference_state_dict("soft_norm_tiny", 0, torch.float32))
    loaded = model.state_dict()
    assert expected.keys() == loaded.keys()
    assert all(torch.equal(loaded[key], value) for key, value in expected.items())


def test_photo_input_is_a_normalised_photograph_padded_like_mmdet():
    import torch

    img, _ = bb._detector_inputs((100, 130), torch.device("cpu"), False, source="photo")
    assert img.shape == (1, 3, 128, 160)
    content, padding = img[..., :100, :130], img[..., 100:, :].abs().sum() + img[..., 130:].abs().sum()
    assert padding == 0
    # A photograph, not noise: neighbouring pixels agree far more than independent draws would.
    assert (content[..., 1:] - content[..., :-1]).abs().mean() < 0.3 * content.std()
    assert -3 < content.mean() < 3 and 0.3 < content.std() < 3
    with pytest.raises(ValueError, match="3 input channels"):
        bb._detector_inputs((64, 64), torch.device("cpu"), False, in_channels=4, source="photo")


def test_norm_eval_applies_to_soft_training_cases_only():
    args = bb.parse_args(["--models", "soft-t", "pvt-t", "--solvers", "newton", "--sizes", "64x64",
                          "--mode", "forward", "forward+backward", "--soft-norm-eval", "--input", "noise"])
    specs = {(spec["model"], spec["mode"]): spec for spec in bb.case_specs(args, "cpu")}
    assert specs[("soft-t", "forward+backward")]["norm_eval"] is True
    assert not specs[("soft-t", "forward")]["norm_eval"] and not specs[("pvt-t", "forward+backward")]["norm_eval"]
    assert all(spec["input"] == "noise" for spec in specs.values())
    assert bb.label({"model": "soft-t", "solver": "newton", "norm_eval": True}) == "soft-t (newton, norm_eval)"
    assert bb.parse_args([]).input == "photo" and not bb.parse_args([]).soft_norm_eval


def test_merge_combines_reports_and_later_cases_win(tmp_path, capsys):
    import json

    base = {"what": "backbone", "peak_bytes": 2**20, "params_m": 14.0, "solver_share": 0.2, "mode": "forward"}
    first = {"meta": {"title": "backbone latency"}, "results": [
        {**base, "model": "pvt-t", "solver": "-", "size": [512, 512], "best_s": 0.5},
        {**base, "model": "soft-t", "solver": "newton_lowrank", "size": [512, 512], "best_s": 0.9}]}
    second = {"meta": {"title": "backbone latency"}, "results": [
        {**base, "model": "soft-t", "solver": "newton_lowrank", "size": [512, 512], "best_s": 0.6},
        {**base, "model": "soft-t", "solver": "newton_lowrank", "size": [1024, 2048], "best_s": 16.0}]}
    paths = []
    for i, report in enumerate((first, second)):
        paths.append(tmp_path / f"r{i}.json")
        paths[-1].write_text(json.dumps(report))
    report = bb.main(["--merge", *map(str, paths), "--out", str(tmp_path / "out")])
    times = {(r["model"], tuple(r["size"])): r["best_s"] for r in report["results"]}
    assert times == {("pvt-t", (512, 512)): 0.5, ("soft-t", (512, 512)): 0.6, ("soft-t", (1024, 2048)): 16.0}
    assert len(report["runs"]) == 2
    assert (tmp_path / "out" / "benchmark_backbone_merged.png").read_bytes()[:4] == b"\x89PNG"
    table = capsys.readouterr().out
    assert "| pvt-t | 14.0 | 0.50 | 1 | - | not run | - | - |" in table
    mixed = {"meta": {"title": "t"}, "results": [{**base, "what": "detector", "model": "pvt-t", "solver": "-",
                                                  "size": [64, 64], "best_s": 1.0}]}
    (tmp_path / "mixed.json").write_text(json.dumps(mixed))
    with pytest.raises(SystemExit, match="different things"):
        bb.main(["--merge", str(paths[0]), str(tmp_path / "mixed.json"), "--out", str(tmp_path / "out")])
