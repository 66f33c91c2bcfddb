"""NiT's pre-extracted DC-AE latents: one safetensors file per image and a data-meta JSONL per data type.

Per image: `{'latent': float (2, C, h, w) = [original, horizontal flip], 'label': int64 scalar}` at
`<output>/<type>/<class>/<stem>.safetensors`. Data-meta lines (one JSON object per image, image order):
image_file (relative to the image folder), latent_file (relative to the type folder), ori_w, ori_h, latent_h,
latent_w, image_h, image_w, type. Files: `data_meta/<ae name>_{256x256,512x512,nr}_meta.jsonl` and the
concatenation `<ae name>_merge_meta.jsonl` of whichever of the three exist.
"""
from __future__ import annotations

import json
import os
import shutil

import torch
from safetensors.torch import save_file

from datasets.token_writer import ShardStore, atomic_write_bytes, shard_error

TYPE_TAGS = {"fixed-256x256": "256x256", "fixed-512x512": "512x512", "native-resolution": "nr"}


def data_type_for(input_res: str) -> str:
    """'256' -> 'fixed-256x256'; 'native' | 'nr' -> 'native-resolution'."""
    if str(input_res).lower() in ("native", "nr", "native-resolution"):
        return "native-resolution"
    r = int(input_res)
    return f"fixed-{r}x{r}"


def type_tag(data_type: str) -> str:
    return TYPE_TAGS.get(data_type, data_type.replace("fixed-", ""))


def latent_relpath(image_file: str) -> str:
    return os.path.splitext(image_file)[0] + ".safetensors"


def save_latent(path: str, latent: torch.Tensor, label: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    save_file({"latent": latent.contiguous().cpu(), "label": torch.tensor(int(label), dtype=torch.int64)}, tmp)
    os.replace(tmp, path)


def meta_line(image_file: str, data_type: str, ori_w: int, ori_h: int, image_w: int, image_h: int,
              latent_w: int, latent_h: int) -> str:
    return json.dumps({"image_file": image_file, "latent_file": latent_relpath(image_file), "ori_w": ori_w,
                       "ori_h": ori_h, "latent_h": latent_h, "latent_w": latent_w, "image_h": image_h,
                       "image_w": image_w, "type": data_type})


def save_meta_shard(store: ShardStore, i: int, lines: list[str], skipped: list[str]) -> None:
    atomic_write_bytes(store.path(i), json.dumps({"lines": lines, "skipped": skipped}).encode())


def load_meta_shard(store: ShardStore, i: int) -> tuple[list[str], list[str]]:
    """(data-meta lines, skipped files) of a finished shard; a damaged file raises ShardError naming it."""
    path = store.path(i)
    try:
        with open(path) as f:
            part = json.load(f)
        lines, skipped = part["lines"], part["skipped"]
        if not isinstance(lines, list) or not isinstance(skipped, list):
            raise ValueError("lines/skipped are not lists")
    except (OSError, ValueError, KeyError, TypeError) as e:
        why = f"no {e} entry" if isinstance(e, KeyError) else "truncated or corrupted: not a complete shard JSON file"
        raise shard_error(path, why) from None
    return lines, skipped


def assemble_meta(store: ShardStore, n_shards: int, out_path: str) -> tuple[int, list[str]]:
    """Concatenate shard lines into the data-meta JSONL (streamed, atomically) -> (lines, skipped files)."""
    n, skipped = 0, []
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path}.tmp{os.getpid()}"
    try:
        with open(tmp, "w") as out:
            for i in range(n_shards):
                lines, names = load_meta_shard(store, i)
                out.writelines(l + "\n" for l in lines)
                n += len(lines)
                skipped += names
    except BaseException:
        os.unlink(tmp)
        raise
    os.replace(tmp, out_path)
    return n, skipped


def write_merge_meta(meta_dir: str, ae_name: str) -> str | None:
    """Rewrite `<ae name>_merge_meta.jsonl` from the per-type files present (256, 512, nr order)."""
    parts = [os.path.join(meta_dir, f"{ae_name}_{tag}_meta.jsonl") for tag in ("256x256", "512x512", "nr")]
    parts = [p for p in parts if os.path.isfile(p)]
    if not parts:
        return None
    out = os.path.join(meta_dir, f"{ae_name}_merge_meta.jsonl")
    tmp = f"{out}.tmp{os.getpid()}"
    with open(tmp, "wb") as dst:
        for p in parts:
            with open(p, "rb") as src:
                shutil.copyfileobj(src, dst)
    os.replace(tmp, out)
    return out
