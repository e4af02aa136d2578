"""tools/analysis/seed_spread.py: reading a run's final metric and the spread report (training itself is the demo's,
covered by tests/test_training_smoke.py)."""
import json

import pytest
import seed_spread


def _write_run(work_dir, records):
    vis = work_dir / "20260101_000000" / "vis_data"
    vis.mkdir(parents=True)
    (vis / "scalars.json").write_text("\n".join(json.dumps(r) for r in records) + "\n")


def test_final_metric_takes_the_last_validation_record(tmp_path):
    _write_run(tmp_path, [{"loss": 1.0, "step": 25}, {"coco/bbox_mAP": 0.5, "step": 300},
                          {"loss": 0.2, "step": 600}, {"coco/bbox_mAP": 0.851, "step": 600}])
    assert seed_spread.final_metric(tmp_path) == ("coco/bbox_mAP", 0.851)
    assert seed_spread.final_metric(tmp_path, "loss") == ("loss", 0.2)
    with pytest.raises(KeyError, match="mIoU"):
        seed_spread.final_metric(tmp_path, "mIoU")


def test_final_metric_of_a_run_without_logs_says_so(tmp_path):
    with pytest.raises(FileNotFoundError, match="validation"):
        seed_spread.final_metric(tmp_path)


def test_summarise_reports_the_spread():
    report = seed_spread.summarise({0: 0.851, 1: 0.863, 2: 0.830}, "coco/bbox_mAP")
    assert report["min"] == 0.830 and report["max"] == 0.863
    assert report["spread"] == pytest.approx(0.033)
    assert report["per_seed"] == {"0": 0.851, "1": 0.863, "2": 0.830}
