"""Encode Fashion-MNIST with the demo tokenizer into the official token-file layout (label first), originals then
horizontal flips, as extract_imagenet_feature.py does for ImageNet.

    python scripts/fmnist_tokens.py --tokenizer-ckpt outputs/demo/vq/checkpoints/step_0001500.pt \
        --out outputs/demo/tokens/train.npy [--split train] [--data /usr/share/datasets/fashion-mnist]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from datasets.fmnist import FashionMNIST  # noqa: E402
from datasets.tokens import save_tokens  # noqa: E402
from tokenizer.demo_vq import DemoVQTokenizer  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tokenizer-ckpt", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--split", default="train")
    ap.add_argument("--data", default=None)
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--no-flip", action="store_true")
    ap.add_argument("--limit", type=int, default=0, help="encode only the first N images (0: all)")
    a = ap.parse_args()
    try:
        tok = DemoVQTokenizer.from_checkpoint(a.tokenizer_ckpt).eval()
        ds = FashionMNIST(a.data, a.split)
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    t0 = time.time()
    codes = {False: [], True: []}
    n = min(len(ds), a.limit) if a.limit > 0 else len(ds)
    with torch.inference_mode():
        for s in range(0, n, a.batch):
            x = ds.get_batch(torch.arange(s, min(n, s + a.batch)))["image"]
            for flip in (False, True) if not a.no_flip else (False,):
                codes[flip].append(tok.encode(x.flip(-1) if flip else x).flatten(1).numpy())
    toks = np.concatenate(codes[False] + codes[True])
    labels = np.concatenate([ds.labels.numpy()[:n]] * (1 if a.no_flip else 2))
    save_tokens(a.out, labels, toks)
    used = len(np.unique(toks))
    print(f"wrote {a.out}: {toks.shape[0]} rows x {toks.shape[1]} tokens, {used}/{tok.codebook_size} codes used, "
          f"{toks.shape[0] / (time.time() - t0):.0f} img/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
