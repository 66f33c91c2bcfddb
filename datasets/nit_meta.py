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


def _exists(path: str, what: str, how: str) -> None:
    if os.path.isdir(path):
        raise ValueError(f"{what} {path} is a folder; expected a file ({how})")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file {path} not found ({how})")


def read_data_meta(path: str) -> list[dict]:
    _exists(path, "data-meta", "write it with extract_imagenet_feature.py or download the official "
                               "dc-ae-f32c32-sana-1.1-diffusers_*_meta.jsonl files")
    entries = []
    line_no = 0
    try:
        with open(path, encoding="utf-8") as f:
            for line_no, line in enumerate(f, 1):
                if not line.strip():
                    continue  # the official README shows the lines blank-separated
                entries.append(_meta_entry(line, path, line_no))
    except UnicodeDecodeError:
        raise ValueError(f"{path}:{line_no + 1}: not UTF-8 text; a data-meta file is JSON lines") from None
    except OSError as e:
        raise ValueError(f"data-meta file {path} cannot be read ({e.strerror or e})") from None
    return entries


def _meta_entry(line: str, path: str, line_no: int) -> dict:
    """One data-meta line, its fields checked: a bad line is named by file and 1-based line number."""
    try:
        entry = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{line_no}: not a JSON object ({e.msg} at column {e.colno})") from None
    if not isinstance(entry, dict):
        raise ValueError(f"{path}:{line_no}: a data-meta line is a JSON object, got {type(entry).__name__}")
    missing = [k for k in META_FIELDS if k not in entry]
    if missing:
        raise ValueError(f"{path}:{line_no}: data-meta line lacks {missing}")
    for k in INT_FIELDS:
        v = entry[k]
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{path}:{line_no}: data-meta field {k} must be an integer >= 1, got {v!r}")
    for k in ("image_file", "latent_file", "type"):
        if not isinstance(entry[k], str) or not entry[k]:
            raise ValueError(f"{path}:{line_no}: data-meta field {k} must be a non-empty string, got {entry[k]!r}")
    return entry


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
    _exists(path, "sampler-meta", "make it with scripts/pack_dataset.py --data-meta <data-meta jsonl> "
                                  "--max-seq-len <L>")
    try:
        with open(path, "rb") as f:
            packs = json.loads(f.read().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        why = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else "not UTF-8"
        raise ValueError(f"{path}: not a JSON sampler-meta file ({why}); expected a list of packs of data-meta "
                         f"line indices, as scripts/pack_dataset.py writes it") from None
    except OSError as e:
        raise ValueError(f"sampler-meta file {path} cannot be read ({e.strerror or e})") from None
    if not isinstance(packs, list) or not all(
            isinstance(p, list) and all(isinstance(i, int) and not isinstance(i, bool) for i in p) for p in packs):
        raise ValueError(f"{path}: a sampler-meta file is a JSON list of lists of integer indices")
    return [[int(i) for i in p] for p in packs]


def write_sampler_meta(path: str, packs: list[list[int]]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write_bytes(path, json.dumps([[int(i) for i in p] for p in packs]).encode())
