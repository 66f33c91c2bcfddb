"""Shared by the NiT tests."""
import json
import math

import torch

from datasets.latent_writer import meta_line, save_latent
from datasets.nit_meta import write_data_meta

from models.nit.model import NiT


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


def write_eval_assets(d, fid_weights=None):
    """Random debug NiT saved like the released flat safetensors, a tiny random DC-AE folder, ADM-style reference
    statistics -> {'weights', 'dcae', 'ref', 'state_dict'}."""
    import numpy as np
    from safetensors.torch import save_file

    from models.nit.model import FLAVOURS
    from tokenizer.dcae import build_tiny_autoencoder_dc
    torch.manual_seed(0)
    build_tiny_autoencoder_dc().save_pretrained(str(d / "dcae"))
    sd = {k: v.contiguous() for k, v in randomized(FLAVOURS["debug"](), seed=0).state_dict().items()}
    save_file(sd, str(d / "model_1000K.safetensors"))
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2048, 16)) * 0.1
    np.savez(d / "ref.npz", mu=rng.normal(size=2048) * 0.1, sigma=a @ a.T + 1e-3 * np.eye(2048))
    return {"weights": d / "model_1000K.safetensors", "dcae": d / "dcae", "ref": d / "ref.npz", "state_dict": sd}
