"""tools/analysis/benchmark_backbone.py: argument parsing, config resolution and report formatting (no timing: one
real case takes tens of seconds on a CPU; tools/analysis/benchmark_backbone.py --help documents how it measures)."""
import argparse
import importlib.util
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("benchmark_backbone", ROOT / "tools/analysis/benchmark_backbone.py")
bb = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bb)


def test_parse_size_and_defaults():
    assert bb.parse_size("800x1333") == (800, 1333)
    with pytest.raises(argparse.ArgumentTypeError):
        bb.parse_size("800")
    args = bb.parse_args([])
    assert args.sizes == [(512, 512), (800, 1333), (1024, 2048)]
    assert args.models == ["soft-t", "soft-s", "pvt-t", "pvtv2-b1", "swin-t"]
    assert "newton" in args.solvers and "cholesky" in args.solvers


def test_every_model_config_resolves_to_a_file():
    for name, config in bb.MODEL_CONFIGS.items():
        assert Path(bb.config_path(config)).is_file(), name


def test_markdown_table_marks_missing_and_failed_cells():
    base = {"mode": "forward", "what": "detector", "peak_bytes": 2**20, "params_m": 22.8, "solver_share": 0.5}
    results = [{**base, "model": "soft-t", "solver": "newton", "size": [512, 512], "best_s": 1.5},
               {**base, "model": "soft-t", "solver": "newton", "size": [800, 1333], "error": "timeout after 10 s"},
               {**base, "model": "pvt-t", "solver": "-", "size": [512, 512], "best_s": 0.25}]
    table = bb.markdown_table(results, [(512, 512), (800, 1333)], "forward")
    lines = table.splitlines()
    assert lines[2].startswith("| soft-t (newton) | 22.8 | 1.50 | 1 | 50 | timeout after 10 s")
    assert lines[3] == "| pvt-t | 22.8 | 0.25 | 1 | - | not run | - | - |"
