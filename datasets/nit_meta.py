"""NiT's data-meta JSONL (one image per line) and sampler-meta JSON (packs of line indices), read and written.

Data-meta fields (official names): image_file, latent_file, ori_w, ori_h, latent_h, latent_w, image_h, image_w,
type ('native-resolution' | 'fixed-256x256' | 'fixed-512x512'). Sampler-meta: a JSON list of packs, each a list of
0-based line indices into its data-meta file, named `<data-meta stem>_LPFHP_<L>.json` where the stem drops
`_meta.jsonl` (`..._merge_meta.jsonl` -> `..._merge_LPFHP_16384.json`).
"""
from __future__ import annotations

import json
import os

from datasets.token_writer import atomic_write_bytes

META_FIELDS = ("image_file", "latent_file", "ori_w", "ori_h", "latent_h", "latent_w", "image_h", "image_w", "type")
DATA_TYPES = ("native-resolution", "fixed-256x256", "fixed-512x512")
INT_FIELDS = ("ori_w", "ori_h", "latent_h", "latent_w", "image_h", "image_w")


def read_data_meta(path: str) -> list[dict]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data-meta file {path} not found (write it with extract_imagenet_feature.py or "
                                "download the official dc-ae-f32c32-sana-1.1-diffusers_*_meta.jsonl files)")
    entries = []
    with open(path) as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue  # the official README shows the lines blank-separated
            entry = json.loads(line)
            missing = [k for k in META_FIELDS if k not in entry]
            if missing:
                raise ValueError(f"{path}:{line_no}: data-meta line lacks {missing}")
            entries.append(entry)
    return entries


def write_data_meta(path: str, entries: list[dict]) -> None:
    lines = []
    for i, e in enumerate(entries):
        missing = [k for k in META_FIELDS if k not in e]
        if missing:
            raise ValueError(f"data-meta entry {i} lacks {missing}")
        row = {k: (int(e[k]) if k in INT_FIELDS else e[k]) for k in META_FIELDS}
        lines.append(json.dumps(row))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode() if lines else b"")


def token_lengths(entries: list[dict], patch_size: int = 1) -> list[int]:
    p2 = int(patch_size) ** 2
    return [int(e["latent_h"]) * int(e["latent_w"]) // p2 for e in entries]


def sampler_meta_name(data_meta_path: str, max_len: int, algorithm: str = "LPFHP") -> str:
    base = os.path.basename(data_meta_path)
    stem = base[:-len(".jsonl")] if base.endswith(".jsonl") else os.path.splitext(base)[0]
    stem = stem[:-len("_meta")] if stem.endswith("_meta") else stem
    return f"{stem}_{algorithm}_{int(max_len)}.json"


def read_sampler_meta(path: str) -> list[list[int]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"sampler-meta file {path} not found (make it with scripts/pack_dataset.py "
                                "--data-meta <data-meta jsonl> --max-seq-len <L>)")
    with open(path) as f:
        packs = json.load(f)
    if not isinstance(packs, list) or not all(isinstance(p, list) for p in packs):
        raise ValueError(f"{path}: a sampler-meta file is a JSON list of lists of indices")
    return [[int(i) for i in p] for p in packs]


def write_sampler_meta(path: str, packs: list[list[int]]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, json.dumps([[int(i) for i in p] for p in packs]).encode())
