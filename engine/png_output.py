"""Where an eval's PNGs go, and the guard that keeps one run's PNGs from overwriting another's.

eval.png_dir null: `<output_dir>/eval/<tag>/png` (the tag hashes the run's settings, so it is the run's own). Set
(the NiT and equivariant recipes set it to output_dir = --sample-dir / --output_dir): the PNGs go into the family's
folder inside it, named by the settings as the family's official sampler names it (Sampling.sample_folder), or into
eval.png_dir itself for a family without one. Beside every folder that receives PNGs lies `.<folder>.run.json`, the
settings its images were made with (beside, not inside: evaluators that read every file of the folder see only
images); a folder whose PNGs came from other settings (or from elsewhere) is refused before anything is generated:
images are never overwritten silently.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from core import dist
from core.io import atomic_write_text


def manifest(folder: Path) -> Path:
    return folder.parent / f".{folder.name}.run.json"


def png_folder(cfg, udir: Path, size=None, several: bool = False, weights=None) -> Path:
    """The folder of this run's PNGs at image size `size` (H, W) from generator `weights`; `several`: the run
    samples several sizes."""
    if cfg.eval.png_dir is None:
        base = udir / "png"
        return base / f"{int(size[0])}x{int(size[1])}" if several else base
    from models import get_family
    fam = get_family(cfg.family)
    base = Path(str(cfg.eval.png_dir))
    folder = fam.sampling.sample_folder if fam.sampling is not None else None
    if folder is not None and cfg.eval.source == "samples":  # the name describes the sampler
        return base / folder(cfg, size, weights)
    return base / f"{int(size[0])}x{int(size[1])}" if several else base


def image_settings(cfg, weights, size) -> dict:
    """What decides the pixels of image i (not how many images, nor how they are scored)."""
    from engine.config import to_container
    from engine.compile_sampling import sample_key
    from engine.generate import file_id
    return {"family": cfg.family, "source": cfg.eval.source, "seed": int(cfg.seed),
            "sample": sample_key(cfg), "labels": cfg.eval.labels,
            "tokenizer": to_container(cfg.tokenizer), "tokenizer_weights": file_id(cfg.tokenizer.ckpt),
            "model": to_container(cfg.model), "precision": cfg.eval.precision,
            "weights": file_id(weights) or (str(weights) if weights else None),
            "size": None if size is None else [int(size[0]), int(size[1])]}


def _pngs_in(folder: Path) -> list[Path]:
    return [p for p in folder.glob("*.png") if p.stem.isdigit()] if folder.is_dir() else []


def claim(folder: Path, settings: dict, cfg) -> None:
    """Refuse `folder` when it holds PNGs of other settings; otherwise record this run's settings in it (rank 0).
    Every rank checks, so all of them stop together."""
    from engine.config import key_name
    key = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    side = manifest(folder)
    pngs = _pngs_in(folder)
    where = (f"give another {key_name('output_dir', cfg)} or eval.png_dir, or delete {folder}")
    if side.exists():
        try:
            old = json.loads(side.read_text())
        except (OSError, ValueError):
            old = {}
        if old.get("key") != key:
            diff = sorted(k for k in set(old.get("settings", {})) | set(settings)
                          if old.get("settings", {}).get(k) != json.loads(json.dumps(settings.get(k), default=str)))
            if pngs:
                raise ValueError(f"{folder} holds {len(pngs)} PNGs of another run ({', '.join(diff) or 'settings'} "
                                 f"differ): they would be overwritten; {where}")
    elif pngs:
        raise ValueError(f"{folder} holds {len(pngs)} numbered PNGs that this project did not write there (no "
                         f"{side.name} beside it): they would be overwritten; {where}")
    if dist.is_main():
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(side, json.dumps({"key": key, "settings": settings}, indent=1, default=str))


def missing(idx: list[int], limit: int, folder: Path) -> list[int]:
    """Indices of `idx` below `limit` whose PNG is not in `folder` yet."""
    return [i for i in idx if i < limit and not (folder / f"{i:06d}.png").exists()]


def write_pngs(images: torch.Tensor, idx: list[int], limit: int, folder: Path) -> int:
    """One PNG per image with global index < limit, named by that index (as the official samplers write them);
    each rank writes its own units as they finish. Returns how many were written."""
    from PIL import Image

    from core.images import save_png
    done = 0
    for img, i in zip(images, idx):
        if i < limit:
            a = img.permute(1, 2, 0).numpy()
            save_png(Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a), folder / f"{i:06d}.png")
            done += 1
    return done
