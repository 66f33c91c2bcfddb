"""Feature-extraction throughput with 1 and 2 processes (torchrun, gloo) on a generated image folder.

    python scripts/bench_extract.py [--images 256] [--res 64] [--batch_size 32] [--config tiny]

Generates random JPEGs in an ImageNet layout and a randomly initialised VQGAN checkpoint in a temporary folder,
runs extract_imagenet_feature.py under torchrun with --nproc_per_node 1 and 2 (one thread per process, as torchrun
sets), checks that both outputs are byte-identical, and prints images/s side by side with their ratio.
"""
from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile

import numpy as np
import torch
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from tokenizer.vqgan import build_vqmodel  # noqa: E402


def make_folder(root: str, n_images: int, classes: int = 4, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(n_images):
        d = os.path.join(root, "train", f"n{i % classes:08d}")
        os.makedirs(d, exist_ok=True)
        w, h = (int(v) for v in rng.integers(80, 160, 2))
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(
            os.path.join(d, f"img_{i:05d}.JPEG"), quality=90)


def run(nproc: int, argv: list[str]) -> float:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           os.path.join(REPO, "extract_imagenet_feature.py"), *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO)
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"extraction with {nproc} process(es) failed:\n{r.stderr[-3000:]}")
    m = re.search(r"encoded (\d+) images .* in ([\d.]+) s: ([\d.]+) img/s", r.stderr)
    if not m:
        raise SystemExit(f"no throughput line in the output of {nproc} process(es):\n{r.stderr[-2000:]}")
    return float(m.group(3))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=256)
    p.add_argument("--shard_size", type=int, default=64, help="small shards keep both processes busy")
    p.add_argument("--res", type=int, default=64)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--config", default="tiny", help="VQGAN size: tiny | mage")
    p.add_argument("--workers", type=int, default=0, help="decoding workers per process")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        make_folder(tmp, a.images)
        torch.manual_seed(0)
        ckpt = os.path.join(tmp, "vq.ckpt")
        torch.save(build_vqmodel(a.config).state_dict(), ckpt)
        speeds, outs = {}, {}
        for n in (1, 2):
            outs[n] = os.path.join(tmp, f"out{n}", "train.npy")
            argv = ["--path", tmp, "--split", "train", "--input_res", str(a.res), "--vq_ckpt", ckpt, "--vq_config",
                    a.config, "--output", outs[n], "--batch_size", str(a.batch_size), "--shard_size",
                    str(a.shard_size), "--row_block", str(a.shard_size), "--num_workers", str(a.workers), "--no_progress"]
            speeds[n] = run(n, argv)
        with open(outs[1], "rb") as f1, open(outs[2], "rb") as f2:
            same = f1.read() == f2.read()
    print(f"VQGAN {a.config}, {a.images} images at {a.res}px (+ flips), batch {a.batch_size}, "
          f"{os.cpu_count()} cores visible")
    print(f"{'processes':>10} {'images/s':>10}")
    for n in (1, 2):
        print(f"{n:>10} {speeds[n]:>10.1f}")
    print(f"ratio 2/1: {speeds[2] / speeds[1]:.2f}; outputs byte-identical: {same}")


if __name__ == "__main__":
    main()
