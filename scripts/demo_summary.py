"""Print the demo's three FIDs (NAT samples, tokenizer reconstructions, random tokens) and the tokenizer's test PSNR;
write them to <out>/fid.txt. Exits 1 if the samples are not at least twice as close to the test split as random
tokens (FID ratio <= 0.5)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from engine.evaluate import latest_result  # noqa: E402

from datasets.fmnist import FashionMNIST  # noqa: E402
from tokenizer.demo_vq import DemoVQTokenizer  # noqa: E402


def train_precision(run: Path) -> str:
    """train.precision of the run's latest checkpoint and, for auto, what it resolved to on this machine."""
    ckpts = sorted((run / "checkpoints").glob("step_*.pt"))
    if not ckpts:
        return "?"
    word = torch.load(ckpts[-1], map_location="cpu", weights_only=True)["config"]["train"]["precision"]
    if word != "auto":
        return word
    from core.precision import resolve_precision
    chosen, why = resolve_precision("auto", torch.device("cpu"), role="summary")
    return f"auto -> {chosen} ({why})"


@torch.inference_mode()
def test_psnr(ckpt: str, data: str | None) -> float:
    tok = DemoVQTokenizer.from_checkpoint(ckpt).eval()
    ds = FashionMNIST(data, "test")
    se, n = 0.0, 0
    for s in range(0, len(ds), 1000):
        x = ds.get_batch(torch.arange(s, min(len(ds), s + 1000)))["image"]
        r = tok.decode(tok.encode(x))
        se += ((r - x) ** 2).mean(dim=(1, 2, 3)).sum().item()
        n += len(x)
    mse = se / n
    return 10 * torch.log10(torch.tensor(4.0 / mse)).item()  # peak-to-peak 2 in [-1, 1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="outputs/demo")
    ap.add_argument("--vq-ckpt", required=True)
    ap.add_argument("--data", default=None)
    ap.add_argument("--seconds", type=int, default=0)
    a = ap.parse_args()
    out = Path(a.out)
    res = {s: latest_result(out / "nat" / "eval", s) for s in ("samples", "reconstructions", "random_tokens")}
    psnr = test_psnr(a.vq_ckpt, a.data)
    ratio = res["samples"]["fid"] / res["random_tokens"]["fid"]
    lines = [f"FID vs Fashion-MNIST test statistics ({res['samples']['n']} images each):",
             f"  NAT samples                {res['samples']['fid']:8.2f}",
             f"  tokenizer reconstructions  {res['reconstructions']['fid']:8.2f}",
             f"  random tokens decoded      {res['random_tokens']['fid']:8.2f}",
             f"  samples / random = {ratio:.3f} ({'OK' if ratio <= 0.5 else 'FAIL'}: must be <= 0.5)",
             f"tokenizer reconstruction PSNR on the 10k test images: {psnr:.2f} dB",
             f"FID-Inception dtype: {res['samples'].get('provenance', {}).get('inception_dtype', '?')}; "
             f"NAT training precision: {train_precision(out / 'nat')}",
             f"sample grid: {out / 'nat' / 'samples.png'} (copied to {out / 'samples.png'})"]
    if a.seconds:
        lines.append(f"demo wall time: {a.seconds // 60} min {a.seconds % 60} s")
    text = "\n".join(lines)
    print(text)
    (out / "fid.txt").write_text(text + "\n")
    grid = out / "nat" / "samples.png"
    if grid.exists():
        (out / "samples.png").write_bytes(grid.read_bytes())
    return 0 if ratio <= 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
