"""Cache column-tokenizer posterior means of a training set for `data.kind=latents` of family eqar, and measure
the vae_norm that scales the noise-augmented latents (`sample()`) to unit standard deviation.

    python scripts/eqar_cache_latents.py --tokenizer-ckpt CKPT --data fmnist|<image folder> --out latents.pt
Writes {'mean': float16 (N, 2, L, C) = [original, horizontal flip], 'label': (N,), 'vae_norm': float,
'stats': {'mu', 'sigma'} of the scaled noisy latents per (token, channel)} atomically.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.io import atomic_torch_save  # noqa: E402
from tokenizer import build_tokenizer  # noqa: E402
from tokenizer.column import POSTERIOR_STD, gaussian_sample  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokenizer-ckpt", required=True)
    ap.add_argument("--data", default="fmnist", help="'fmnist' or an ImageNet-layout folder")
    ap.add_argument("--fmnist-dir", default=None)
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--width", type=int, default=32)
    ap.add_argument("--limit", type=int, default=0, help="first N images only (0: all)")
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    tok = build_tokenizer("column", ckpt=a.tokenizer_ckpt)
    from datasets.column_images import FashionMNISTColumns, ImageFolderColumns
    ds = (FashionMNISTColumns(a.fmnist_dir, "train", a.height, a.width, hflip=False) if a.data == "fmnist"
          else ImageFolderColumns(a.data, a.height, a.width, hflip=False))
    n = min(len(ds), a.limit) if a.limit else len(ds)
    t0, means, labels = time.time(), [], []
    with torch.inference_mode():
        for s in range(0, n, a.batch):
            b = ds.get_batch(torch.arange(s, min(n, s + a.batch)), torch.Generator().manual_seed(s))
            x = b["image"]
            means.append(torch.stack([tok.encode(x), tok.encode(x.flip(-1))], 1).half())
            labels.append(b["label"])
    mean, label = torch.cat(means), torch.cat(labels)
    noisy = gaussian_sample(mean[:, 0].float(), POSTERIOR_STD, torch.Generator().manual_seed(0))
    vae_norm = float(1.0 / noisy.std())
    scaled = noisy * vae_norm
    stats = {"mu": scaled.mean(0), "sigma": scaled.std(0)}
    atomic_torch_save({"mean": mean, "label": label, "vae_norm": vae_norm, "stats": stats}, a.out)
    print(f"cached {n} images x 2 views, {mean.shape[2]} tokens x {mean.shape[3]} in {time.time() - t0:.1f} s; "
          f"vae_norm {vae_norm:.5f} (noisy latents std 1/{vae_norm:.3f})")
    Path(a.out).with_suffix(".vae_norm").write_text(f"{vae_norm:.6f}\n")


if __name__ == "__main__":
    main()
