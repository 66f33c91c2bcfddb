"""NiT demo data: Fashion-MNIST at several sizes / aspect ratios as NiT latent files.

  python scripts/nit_fmnist_data.py --data /usr/share/datasets/fashion-mnist --out outputs/demo_nit/data \
      --n-train 3000 --sizes 32x32,32x48,48x32

Every training image is written once per size (as the official data holds each ImageNet image at 256, 512 and its
native size), brought to H x W by the same rule the evaluator applies to the real images of an FID at that size
(datasets.cover_crop: scale to cover, keep the aspect ratio, center-crop), so the training distribution at a size is
the reference distribution at that size. The "tokenizer" is the identity (tokenizer.kind=pixels): a latent is the
image itself, [-1, 1], one grey channel (`--channels 3` replicates it to RGB), stored with its horizontal flip as
`{'latent': (2, C, H, W), 'label'}` under <out>/latents/<type>/..., listed in <out>/fmnist_merge_meta.jsonl (official
data-meta fields).

Why one channel: with velocity prediction the network must hand the input noise back out at high t (v = eps - x0),
and a 4x4x3 token of three noisy copies of one grey value is 48 numbers to reproduce through a 128-wide model
instead of 16. Measured at 2000 one-pack steps (same LR, sampler and FID-500): 32x32 190.9 with 3 channels, 152.4
with 1; the 3-channel samples were streaky at every size, their t = 1 predictions far from the class means.
Pack it with scripts/pack_dataset.py. FID references come from `--mode eval` itself (eval.ref_images=fmnist-test,
cached per size).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datasets.cover_crop import cover_center_crop_uint8  # noqa: E402
from datasets.fmnist import DEFAULT_DIR, FILES, read_idx  # noqa: E402
from datasets.latent_writer import meta_line, save_latent  # noqa: E402
from datasets.nit_meta import write_data_meta  # noqa: E402


def parse_sizes(text: str) -> list[tuple[int, int]]:
    return [tuple(int(v) for v in s.split("x")) for s in text.split(",") if s]


def resized(images: np.ndarray, h: int, w: int, channels: int = 1) -> torch.Tensor:
    """uint8 [N, 28, 28] -> uint8 [N, channels, h, w] (datasets.cover_crop's rule; channels 3: grey replicated)."""
    out = cover_center_crop_uint8(images, h, w)
    return torch.from_numpy(out)[:, None].expand(-1, channels, -1, -1).contiguous()


def data_type(h: int, w: int) -> str:
    return f"fixed-{h}x{w}" if h == w else "native-resolution"


def write_latents(images, labels, sizes, out: Path, channels: int = 1) -> Path:
    entries = []
    for h, w in sizes:
        x = resized(images, h, w, channels).float().div(127.5).sub(1.0)
        t = data_type(h, w)
        for i, (img, label) in enumerate(zip(x, labels)):
            image_file = f"{int(label)}/{i:05d}_{h}x{w}.png"
            line = json.loads(meta_line(image_file, t, 28, 28, w, h, w, h))
            save_latent(str(out / "latents" / t / line["latent_file"]), torch.stack([img, img.flip(-1)]), int(label))
            entries.append(line)
    meta = out / "fmnist_merge_meta.jsonl"
    write_data_meta(str(meta), entries)
    return meta


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DIR), help="folder of the Fashion-MNIST IDX .gz files")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n-train", type=int, default=3000, help="training images (each written at every size)")
    ap.add_argument("--sizes", default="32x32,32x48,48x32", help="training sizes HxW")
    ap.add_argument("--channels", type=int, default=1, choices=(1, 3),
                    help="latent channels: 1 = the grey image (tokenizer.channels=1), 3 = grey replicated to RGB")
    args = ap.parse_args(argv)
    out = Path(args.out)
    t0 = time.time()
    meta = out / "fmnist_merge_meta.jsonl"
    if not meta.exists():
        img, lab = (read_idx(Path(args.data) / f) for f in FILES["train"])
        meta = write_latents(img[:args.n_train], lab[:args.n_train], parse_sizes(args.sizes), out, args.channels)
        print(f"wrote {meta} ({args.n_train} images x {len(parse_sizes(args.sizes))} sizes, {time.time() - t0:.0f} s)")
    else:
        print(f"{meta} exists: kept")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
