"""Shared test utilities: run train.py in-process or under torchrun."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def torchrun_cmd(nproc: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
            str(ROOT / "train.py"), *args]


def env() -> dict:
    e = dict(os.environ)
    e["OMP_NUM_THREADS"] = "1"
    e["PYTHONPATH"] = str(ROOT)
    return e


def run(cmd, timeout=300, check=True):
    p = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError(f"command failed ({p.returncode}): {' '.join(cmd)}\n{p.stdout[-3000:]}\n{p.stderr[-5000:]}")
    return p


def read_metrics(out_dir) -> dict[int, dict]:
    lines = (Path(out_dir) / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r for r in map(json.loads, lines)}


def parse_train_args(monkeypatch, argv) -> tuple:
    """(config, mode) that train.main(argv) would hand to the runner, without running anything."""
    import train
    from engine import runner
    seen = {}
    monkeypatch.setattr(runner, "run", lambda cfg, mode: seen.update(cfg=cfg, mode=mode) or 0)
    assert train.main(argv) == 0
    return seen["cfg"], seen["mode"]
