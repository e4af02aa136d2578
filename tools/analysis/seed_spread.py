"""Train one config with several seeds and report how far the final metric spreads: the stability check of the demo
schedules (a schedule whose result depends on the seed by more than a few hundredths says nothing about a change).

Each seed is a separate ``tools/train.py CONFIG --cfg-options randomness.seed=S`` run in ``OUT/seed_S`` (sequentially,
or ``--parallel N`` at a time; each run gets ``--threads`` torch threads). The metric is read from the last
validation record of the run's ``vis_data/scalars.json`` (what mmengine's ``LoggerHook`` writes). Prints one JSON
object: the metric per seed, min, max and spread (max - min), and writes it to ``OUT/seed_spread.json``.

Example (the README's demo numbers; ~8 min per seed with 1 thread on a 2-core CPU, two at a time)::

    python tools/analysis/seed_spread.py configs/demo/retinanet_soft-t-norm_fpn_demo.py --seeds 0 1 2 3 \\
        --parallel 2 --threads 1
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="mmdet / mmseg config to train")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (randomness.seed)")
    parser.add_argument("--metric", default=None,
                        help="scalar to compare (default: coco/bbox_mAP if the run logs it, else mIoU)")
    parser.add_argument("--parallel", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=0, help="OMP/MKL threads per run (0: torch's default)")
    parser.add_argument("--out", default="work_dirs/seed_spread", help="output directory")
    return parser.parse_args(argv)


def final_metric(work_dir: Path, metric: str | None = None) -> tuple[str, float]:
    """``(name, value)`` of the last validation record in ``work_dir/*/vis_data/scalars.json``; ``metric`` None picks
    ``coco/bbox_mAP``, else ``mIoU``. Raises ``FileNotFoundError`` / ``KeyError`` when the run logged none."""
    logs = sorted(work_dir.glob("*/vis_data/scalars.json"))
    if not logs:
        raise FileNotFoundError(f"no */vis_data/scalars.json under {work_dir}: did the run finish its validation?")
    records = [json.loads(line) for line in logs[-1].read_text().splitlines() if line.strip()]
    names = [metric] if metric else ["coco/bbox_mAP", "mIoU"]
    for record in reversed(records):
        for name in names:
            if name in record:
                return name, float(record[name])
    raise KeyError(f"none of {names} in {logs[-1]}")


def train(config: str, seed: int, out: Path, threads: int) -> Path:
    """Run ``tools/train.py`` for one seed; its log goes to ``out/seed_S.log``. Raises ``RuntimeError`` on failure."""
    work_dir = out / f"seed_{seed}"
    env = dict(os.environ)
    if threads > 0:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    cmd = [sys.executable, str(ROOT / "tools/train.py"), config, "--work-dir", str(work_dir),
           "--cfg-options", f"randomness.seed={seed}"]
    log = out / f"seed_{seed}.log"
    with open(log, "w") as handle:
        rc = subprocess.run(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT).returncode
    if rc != 0:
        raise RuntimeError(f"seed {seed}: {' '.join(cmd)} exited with {rc}; see {log}")
    return work_dir


def summarise(values: dict[int, float], metric: str) -> dict:
    """The report: values per seed, min, max, spread."""
    return {"metric": metric, "per_seed": {str(seed): value for seed, value in values.items()},
            "min": min(values.values()), "max": max(values.values()),
            "spread": round(max(values.values()) - min(values.values()), 6)}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(max_workers=max(1, args.parallel)) as pool:
        work_dirs = list(pool.map(lambda seed: train(args.config, seed, out, args.threads), args.seeds))
    found = {seed: final_metric(work_dir, args.metric) for seed, work_dir in zip(args.seeds, work_dirs)}
    report = summarise({seed: value for seed, (_, value) in found.items()}, next(iter(found.values()))[0])
    (out / "seed_spread.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
