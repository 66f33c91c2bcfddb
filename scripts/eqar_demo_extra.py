"""The column-AR demo's last step: FID of decoded random latents drawn with the training latents' statistics (per
token and channel mean/std, the baseline the samples must beat), one long image per class (>= 4x the trained
width), and the summary written to <out>/fid.txt.

    python scripts/eqar_demo_extra.py --config configs/demo/eqar_fmnist.yaml --latents L.pt --length 32 [k=v ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.evaluate import latest_result  # noqa: E402

from core.images import grid_image, save_grid, save_png, to_uint8  # noqa: E402
from core.seeding import row_generators  # noqa: E402
from engine.config import load_config  # noqa: E402
from engine.evaluate import build_evaluator  # noqa: E402
from engine.generate import build_generator, build_tokenizer, generate  # noqa: E402


@torch.inference_mode()
def random_latent_fid(cfg, tok, stats, vae_norm: float, device) -> float:
    ev = build_evaluator(cfg, device, cfg.eval.ref_stats)
    n, bs = int(cfg.eval.n), int(cfg.eval.batch_size)
    mu, sigma = stats["mu"].float(), stats["sigma"].float()
    for s in range(0, n, bs):
        gens = row_generators(int(cfg.seed) + 999, range(s, min(n, s + bs)))
        z = torch.stack([mu + sigma * torch.randn(mu.shape, generator=g) for g in gens])
        ev.update(to_uint8(tok.decode((z / vae_norm).to(device))).cpu())
    return float(ev.compute()["fid"])


@torch.inference_mode()
def long_images(cfg, model, fam, tok, length: int, out: Path, device) -> Path:
    settings = fam.sampling.settings(cfg, model)
    h, w = int(cfg.data.image_size), length * settings.column_width
    k = int(cfg.model.class_num)
    labels = torch.arange(k, device=device)
    lat, _ = generate(model, fam, settings, labels, range(k), int(cfg.seed) + 4242, size=(h, w))
    imgs = to_uint8(tok.decode(lat)).cpu()
    out.mkdir(parents=True, exist_ok=True)
    for c in range(k):
        save_png(grid_image(imgs[c:c + 1], 1), out / f"class_{c}.png")
    save_grid(imgs, k, out / "all_classes.png")
    return out / "all_classes.png"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", required=True)
    ap.add_argument("--latents", required=True, help="the cache of scripts/eqar_cache_latents.py (its stats)")
    ap.add_argument("--length", type=int, default=32, help="tokens of the long images")
    ap.add_argument("--seconds", type=int, default=0)
    ap.add_argument("overrides", nargs="*")
    a = ap.parse_args()
    cfg = load_config(a.config, a.overrides)
    device = torch.device("cpu")
    out = Path(cfg.output_dir).parent
    model, fam = build_generator(cfg, device)
    tok = build_tokenizer(cfg, device)
    cache = torch.load(a.latents, map_location="cpu", weights_only=True)
    rnd = random_latent_fid(cfg, tok, cache["stats"], float(cfg.tokenizer.vae_norm), device)
    longp = long_images(cfg, model, fam, tok, a.length, out / "long", device)
    res = latest_result(Path(cfg.output_dir) / "eval", "samples")
    try:
        rec = latest_result(Path(cfg.output_dir) / "eval", "reconstructions")["fid"]
    except FileNotFoundError:
        rec = None
    trained = int(cfg.data.token_num)
    lines = [f"FID-{res['n']} vs Fashion-MNIST test statistics ({cfg.eval.ref_n} test images):",
             f"  column AR samples (cfg {cfg.sample.cfg}, {cfg.sample.num_sampling_steps} Euler steps)  "
             f"{res['fid']:8.2f}",
             f"  random latents decoded (per-token/channel mean and std of the training latents)  {rnd:8.2f}",
             f"  samples / random = {res['fid'] / rnd:.3f}",
             f"  tokenizer reconstructions of {res['n']} test images (posterior mean; the samples' floor)  "
             + (f"{rec:8.2f}" if rec is not None else "     n/a"),
             f"vae_norm {float(cfg.tokenizer.vae_norm):.5f} (measured: noisy latents x vae_norm have std 1)",
             f"sample grid: {Path(cfg.output_dir) / 'samples.png'}",
             f"long images: {a.length} tokens = {a.length * int(cfg.data.column_width)} px wide "
             f"({a.length / trained:.0f}x the {trained} trained), one per class: {longp.parent}/class_*.png"]
    if a.seconds:
        lines.append(f"demo wall time before this step: {a.seconds // 60} min {a.seconds % 60} s")
    text = "\n".join(lines)
    (out / "fid.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
