"""Shared by the NiT tests."""
import json
import math

import torch

from datasets.latent_writer import meta_line, save_latent
from datasets.nit_meta import write_data_meta

from models.nit import NiT


def randomized(model: NiT, seed: int = 0) -> NiT:
    """A model whose every weight (including the zero-initialised adaLN/output layers) is random."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 1 else 1.0 / math.sqrt(p.shape[-1])))
    return model.eval()


def write_latent_dataset(tmp_path, shapes, labels, channels=4):
    """Per-image latent files (random) in the extractor's layout + a data-meta file -> (root, meta path, latents)."""
    g = torch.Generator().manual_seed(0)
    root = tmp_path / "latents"
    entries, lats = [], []
    for k, ((h, w), label) in enumerate(zip(shapes, labels)):
        data_type = "native-resolution" if h != w else f"fixed-{32 * h}x{32 * h}"
        lat = torch.randn(2, channels, h, w, generator=g)
        image_file = f"n{label:02d}/img{k}.JPEG"
        line = json.loads(meta_line(image_file, data_type, 32 * w, 32 * h, 32 * w, 32 * h, w, h))
        save_latent(str(root / data_type / line["latent_file"]), lat, label)
        entries.append(line)
        lats.append(lat)
    meta = tmp_path / "meta" / "x_merge_meta.jsonl"
    write_data_meta(str(meta), entries)
    return str(root), str(meta), lats
