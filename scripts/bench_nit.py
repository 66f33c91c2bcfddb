"""Forward time of a NiT flavour on one pack (random weights), fp32, no grad.

  OMP_NUM_THREADS=2 python scripts/bench_nit.py --flavour NiT_B --grids 16x16x4 [--backend runs --repeats 3]

--grids: comma list of HxW[xCOUNT] latent grids making up the pack (16x16x4 = four 512-px images).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.layers import count_params  # noqa: E402
from models.nit import FLAVOURS, pack_latents  # noqa: E402
from models.varlen_attention import varlen_backend  # noqa: E402


def parse_grids(text: str) -> list[tuple[int, int]]:
    out = []
    for part in text.split(","):
        h, w, *rep = (int(v) for v in part.split("x"))
        out += [(h, w)] * (rep[0] if rep else 1)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--flavour", default="debug", choices=sorted(FLAVOURS))
    ap.add_argument("--grids", default="16x16x4")
    ap.add_argument("--backend", default="runs")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    model = FLAVOURS[args.flavour]().eval()
    with torch.no_grad():
        for p in model.parameters():  # the DiT init zeroes the output path; time a generic network
            p.normal_(0, 0.02)
    grids = parse_grids(args.grids)
    x, hw = pack_latents([torch.randn(model.in_channels, h, w) for h, w in grids])
    t = torch.rand(len(grids))
    y = torch.randint(0, 1000, (len(grids),))
    times = []
    with torch.no_grad(), varlen_backend(args.backend):
        model(x, t, y, hw)
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            model(x, t, y, hw)
            times.append(time.perf_counter() - t0)
    print(f"{args.flavour} ({count_params(model):,} params), pack {len(grids)} images / {x.shape[0]} tokens, "
          f"backend {args.backend}, threads {torch.get_num_threads()}: min {min(times):.3f} s, "
          f"median {statistics.median(times):.3f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
