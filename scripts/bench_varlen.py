"""Compare the torch paths of block-diagonal (varlen) attention on one pack and check they agree.

  OMP_NUM_THREADS=2 python scripts/bench_varlen.py [--heads 16 --head-dim 72 --lengths 1024,1024,256x6,64x8]

Prints min / median seconds of forward (and forward+backward with --backward) per backend and the ratio to the
fastest; 'dense' (an N×N mask) and 'flex' (flex attention with a document mask) are candidates for comparison only.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from models.varlen_attention import Segments, varlen_attention  # noqa: E402


def parse_lengths(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        n, _, rep = part.partition("x")
        out += [int(n)] * (int(rep) if rep else 1)
    return out


def nested_path(seg: Segments):
    """SDPA on jagged nested tensors (B, j, H, D)."""
    offsets = seg.cu_seqlens.to(torch.int64)

    def nt(x):
        return torch.nested.nested_tensor_from_jagged(x, offsets).transpose(1, 2)

    def run(q, k, v):
        return F.scaled_dot_product_attention(nt(q), nt(k), nt(v)).transpose(1, 2).values()
    return run


def flex_path(seg: Segments):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    ids = seg.segment_ids()

    def doc(b, h, qi, ki):
        return ids[qi] == ids[ki]

    block = create_block_mask(doc, None, None, seg.total, seg.total, device=str(ids.device))

    def run(q, k, v):
        out = flex_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                             block_mask=block)
        return out[0].transpose(0, 1)
    return run


def timed(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--head-dim", type=int, default=72)
    ap.add_argument("--lengths", default="1024x2,256x6,64x8")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--backward", action="store_true")
    ap.add_argument("--order", choices=("shuffled", "ascending"), default="shuffled",
                    help="segment order in the pack (LPFHP packs are ascending)")
    ap.add_argument("--skip", default="", help="comma list of backends not to run (e.g. dense,flex)")
    args = ap.parse_args(argv)
    lengths = parse_lengths(args.lengths)
    torch.manual_seed(0)
    # the order decides how many runs of equal lengths a pack has (what the "runs" path batches)
    lengths = sorted(lengths) if args.order == "ascending" else [lengths[i] for i in torch.randperm(len(lengths))]
    seg = Segments(lengths, torch.device("cpu"))
    n = seg.total
    q, k, v = (torch.randn(n, args.heads, args.head_dim, requires_grad=args.backward) for _ in range(3))
    print(f"pack: {n} tokens, {len(lengths)} segments {sorted(set(lengths))}, heads {args.heads}, "
          f"head_dim {args.head_dim}, threads {torch.get_num_threads()}, backward {args.backward}, order {args.order}")

    paths = {name: (lambda q, k, v, name=name: varlen_attention(q, k, v, seg, backend=name))
             for name in ("runs", "grouped", "loop", "dense")}
    paths["nested"] = nested_path(seg)
    try:
        paths["flex"] = flex_path(seg)
    except Exception as e:  # noqa: BLE001  (flex needs a recent torch; report and go on)
        print(f"flex: unavailable ({type(e).__name__}: {e})")
    skip = set(filter(None, args.skip.split(",")))
    with torch.no_grad():
        ref = varlen_attention(q, k, v, seg, backend="loop")
    results = {}
    for name, fn in paths.items():
        if name in skip:
            continue
        try:
            with torch.no_grad():
                err = (fn(q, k, v) - ref).abs().max().item()

            def step(fn=fn):
                if args.backward:
                    fn(q, k, v).square().sum().backward()
                else:
                    with torch.no_grad():
                        fn(q, k, v)
            results[name] = (timed(step, args.repeats), err)
        except Exception as e:  # noqa: BLE001
            print(f"{name}: failed ({type(e).__name__}: {str(e)[:200]})")
    best = min(statistics.median(t) for t, _ in results.values())
    print(f"{'backend':>8} {'min s':>8} {'median s':>9} {'x fastest':>10} {'max |err|':>10}")
    for name, (t, err) in sorted(results.items(), key=lambda kv: statistics.median(kv[1][0])):
        print(f"{name:>8} {min(t):8.4f} {statistics.median(t):9.4f} {statistics.median(t) / best:10.2f} {err:10.2e}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
