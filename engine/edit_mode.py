"""--mode edit: inpaint / outpaint / class-edit PNGs with any family that has `Family.edit` (engine/editing.py).

Image k of edit.images (a PNG, or a folder's PNGs in name order) is edited with generator (seed, k), so
`<output_dir>/edit/<k:06d>.png` is the same file for any number of processes: the images go in units of
edit.batch_size (the same batches whatever the process count), the units are split over the processes. Rank 0 then
writes `<output_dir>/edit_grid.png`: one row per image, columns input (on the canvas), mask (white = regenerated),
output.
"""
from __future__ import annotations

from pathlib import Path

import torch

from core import dist
from core.seeding import row_generators
from engine import editing, png_output
from engine.logging import logger, setup_logging

GRID_MAX_ROWS = 64  # the grid shows the first images only: one PNG per image is the full output


def inputs(cfg, fam, model, channels: int = 1) -> dict:
    """Everything --mode edit reads from edit.*, checked (the preflight calls it with the meta-device model)."""
    e = cfg.edit
    if e.images is None:
        raise ValueError("edit.images is not set: give a PNG file or a folder of PNGs")
    files, images = editing.read_images(e.images, channels)
    n, _, h, w = images.shape
    mask = editing.read_mask(None if e.mask is None else str(e.mask), n, h, w)
    num_classes = fam.sampling.num_classes(model, cfg) if fam.sampling.num_classes is not None else int(cfg.data.num_classes)
    labels = editing.read_labels(e.labels, n, num_classes)
    size, at = editing.canvas_layout((h, w), None if e.canvas is None else list(e.canvas),
                                     None if e.anchor is None else (e.anchor if isinstance(e.anchor, str)
                                                                    else list(e.anchor)),
                                     int(e.extend_left), int(e.extend_right))
    if int(e.batch_size) < 1:
        raise ValueError(f"edit.batch_size must be >= 1, got {e.batch_size}")
    seed = int(cfg.seed) if e.seed is None else int(e.seed)
    return dict(files=files, images=images, mask=mask, labels=labels, size=size, at=at, seed=seed)


def check(cfg, fam, model) -> None:
    """Preflight: a family without editing, and every edit.* input, before any weights are read."""
    if "edit" not in fam.modes:
        raise ValueError(f"family {fam.name} has no editing (its sampling sets no `edit`)")
    inputs(cfg, fam, model)


def _settings_key(cfg, weights, files) -> dict:
    from engine.config import to_container
    from engine.generate import file_id
    s = png_output.image_settings(cfg, weights, None)
    s["edit"] = to_container(cfg.edit)
    s["inputs"] = [file_id(f) for f in files]
    if cfg.edit.mask is not None and not str(cfg.edit.mask).startswith("box:"):
        s["mask_file"] = file_id(str(cfg.edit.mask))
    return s


def edit(cfg) -> dict:
    from engine.generate import build_generator, build_tokenizer, weights_path
    from engine.precision import autocast
    device = dist.init_distributed(cfg.device)
    out = Path(cfg.output_dir)
    setup_logging(str(out))
    from engine.config import to_yaml
    if dist.is_main():
        logger.info("config:\n" + to_yaml(cfg))
    weights = weights_path(cfg, prefer_ema=bool(cfg.eval.use_ema))
    folder = out / "edit"
    tok = build_tokenizer(cfg, device)
    from models import build_model, get_family
    fam = get_family(cfg.family)
    with torch.device("meta"):
        meta, _ = build_model(cfg, fam)
    x = inputs(cfg, fam, meta, tok.in_channels)
    editing.edit_size(fam, meta, tok, x["size"])  # a canvas off the model's grid, refused before anything is written
    png_output.claim(folder, _settings_key(cfg, weights, x["files"]), cfg)  # refuses another run's PNGs
    dist.barrier()
    model, fam = build_generator(cfg, device)
    settings = fam.sampling.settings(cfg, model)
    if fam.sampling.replays(settings):
        raise ValueError("editing draws from per-row generators: settings that replay one process's random stream "
                         "(sample.rng=official) cannot edit")
    canvas, regen = editing.place(x["images"], x["mask"], x["size"], x["at"])
    n, bs = canvas.shape[0], int(cfg.edit.batch_size)
    import numpy as np
    units = np.array_split(np.arange((n + bs - 1) // bs), dist.world_size())[dist.rank()].tolist()
    written = 0
    for u in units:
        idx = list(range(u * bs, min(n, (u + 1) * bs)))
        with autocast(device, str(cfg.eval.precision)):
            res = editing.run_edit(model, fam, tok, settings, canvas[idx], regen[idx], x["labels"][idx],
                                   row_generators(x["seed"], idx), int(cfg.eval.decode_batch))
        written += png_output.write_pngs(res["images"], idx, n, folder)
    logger.info(f"rank {dist.rank()}: {written} edited image(s) written to {folder}")
    dist.barrier()
    result = {"n": n, "folder": str(folder), "canvas": list(x["size"]), "anchor": list(x["at"]), "seed": x["seed"]}
    if dist.is_main():
        result["grid"] = str(write_grid(canvas, regen, folder, out / "edit_grid.png"))
        logger.info(f"wrote {result['grid']}")
    return result


def write_grid(canvas: torch.Tensor, regen: torch.Tensor, folder: Path, path: Path) -> Path:
    """Rows input / mask / output of the first GRID_MAX_ROWS images (the outputs read back from their PNGs)."""
    from core.images import save_grid
    k = min(canvas.shape[0], GRID_MAX_ROWS)
    c = canvas.shape[1]
    tiles = []
    for i in range(k):
        outp = editing.read_png(folder / f"{i:06d}.png", c, "edited image")
        m = (regen[i].to(torch.uint8) * 255).unsqueeze(0).expand(c, -1, -1)
        tiles += [canvas[i], m, outp]
    save_grid(torch.stack(tiles), k, path)
    return path

