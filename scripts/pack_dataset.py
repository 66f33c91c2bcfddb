"""Pack a NiT data-meta file into a sampler-meta file with LPFHP (like the official tools/pack_dataset.py).

  python scripts/pack_dataset.py --data-meta data_meta/dc-ae-f32c32-sana-1.1-diffusers_merge_meta.jsonl \
      --max-seq-len 16384 [--split k] [--output-dir DIR]

writes <output dir (default: the data-meta's folder)>/<stem>_LPFHP_<L>.json, e.g.
dc-ae-f32c32-sana-1.1-diffusers_merge_LPFHP_16384.json, and prints the packing efficiency.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from datasets.lpfhp import pack_lengths  # noqa: E402
from datasets.nit_meta import read_data_meta, sampler_meta_name, token_lengths, write_sampler_meta  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-meta", required=True)
    ap.add_argument("--max-seq-len", type=int, default=16384)
    ap.add_argument("--max-seq-per-pack", type=int, default=None, help="default: max-seq-len (unlimited)")
    ap.add_argument("--algorithm", default="LPFHP", choices=["LPFHP"])
    ap.add_argument("--split", type=int, default=1, help="pack k consecutive chunks of the data-meta independently")
    ap.add_argument("--patch-size", type=int, default=1)
    ap.add_argument("--output-dir", default=None)
    args = ap.parse_args(argv)
    entries = read_data_meta(args.data_meta)
    lengths = token_lengths(entries, args.patch_size)
    packs = pack_lengths(lengths, args.max_seq_len, args.max_seq_per_pack,
                         names=[e["latent_file"] for e in entries], split=args.split)
    out_dir = args.output_dir or os.path.dirname(os.path.abspath(args.data_meta))
    out = os.path.join(out_dir, sampler_meta_name(args.data_meta, args.max_seq_len, args.algorithm))
    write_sampler_meta(out, packs)
    print(f"wrote {len(packs)} packs to {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
