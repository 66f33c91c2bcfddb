"""--mode eval at several image sizes in one run (families with `Family.sample_sizes`, e.g. NiT's sample.sizes).

One process launch, one Inception load: every unit of `eval.batch_size` sample indices is generated at ALL sizes
in one call of the family's sampler (one packed batch of rows of different sizes), then each size's images go to
that size's evaluator, whose reference statistics come from real images brought to that size
(engine.evaluate.ensure_ref_stats, cached per size). Sample i at size s depends only on (seed, i) and s, so 1 and N
processes give the same images, and each size's images are those a run of that size alone would make.

Outputs under <output_dir>/eval/<tag>/: unit files (features per size, resumable as in the one-size eval),
result.json {source, n, sizes: {"HxW": {fid, ...}}, provenance}; per size the grid <output_dir>/samples_<H>x<W>.png,
the first eval.save_png PNGs in <udir>/png/<H>x<W>/<index>.png (eval.png_dir null) or in the family's folder of
that size inside eval.png_dir (engine.png_output) and, with eval.save_npz, samples_<H>x<W>.npz.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from core import dist
from core.images import save_grid
from core.io import atomic_write_text
from engine import checkpoint as ck
from engine import png_output
from engine.evaluate import (ImageSource, _inception, _load_features, _provenance, _tag, build_evaluator,
                             ensure_ref_stats, my_units, size_name, wants_metrics, weights_path)
from engine.logging import logger, progress


def evaluate_sizes(cfg, device, sizes: list[tuple[int, int]]) -> dict:
    out = Path(cfg.output_dir)
    if len(set(sizes)) != len(sizes):
        raise ValueError(f"the sample sizes {[size_name(s) for s in sizes]} repeat a size")
    n, bs = int(cfg.eval.n), int(cfg.eval.batch_size)
    png_n = n if int(cfg.eval.save_png) < 0 else min(n, int(cfg.eval.save_png))
    if png_n and cfg.eval.png_dir is not None:  # refused before anything is loaded or generated
        for s in sizes:
            png_output.claim(png_output.png_folder(cfg, out, s, several=True, weights=weights_path(cfg)),
                             png_output.image_settings(cfg, weights_path(cfg), s), cfg)
    refs, evs = {s: None for s in sizes}, {s: None for s in sizes}
    if wants_metrics(cfg):
        inc = _inception(cfg, device)
        refs = {s: ensure_ref_stats(cfg, device, size=s, multi=True, inception=inc) for s in sizes}
        evs = {s: build_evaluator(cfg, device, refs[s], inception=inc, quiet=k > 0) for k, s in enumerate(sizes)}
    elif dist.is_main():
        logger.info("eval.metrics=[]: images only, no FID-Inception loaded")
    src = ImageSource(cfg, device)
    if bool(getattr(src.settings, "sequential", False)):
        raise ValueError("settings that replay one process's random stream cannot sample several sizes in one run")
    first = evs[sizes[0]]
    tag = _tag(cfg, src.weights, first.collector if first is not None else None)
    udir = out / "eval" / tag
    png_dirs = {s: png_output.png_folder(cfg, udir, s, several=True, weights=src.weights) for s in sizes}
    if png_n and cfg.eval.png_dir is None:
        for s in sizes:
            png_output.claim(png_dirs[s], png_output.image_settings(cfg, src.weights, s), cfg)
    units = my_units(n, bs)
    grid_n = int(cfg.sample.grid_classes) * int(cfg.sample.grid_per_class)
    feats, index, reused, pngs = {s: [] for s in sizes}, [], 0, 0
    mine = sum(min(n, (u + 1) * bs) - u * bs for u in units)
    bar = progress(total=mine * dist.world_size() * len(sizes), desc=f"eval {len(sizes)} sizes", unit="img")
    try:
        for u in units:
            f = udir / f"unit_{u:06d}.pt"
            idx = list(range(u * bs, min(n, (u + 1) * bs)))
            if cfg.eval.resume and f.exists():
                rec = ck.load_file(f)
                reused += 1
                if any(png_output.missing(idx, png_n, png_dirs[s]) for s in sizes):  # e.g. a new png_dir
                    fresh = None
                    for s in sizes:
                        r = rec["sizes"][size_name(s)]
                        if "images" not in r and fresh is None:
                            fresh = src.sized(idx, sizes)
                        images = r["images"] if "images" in r else fresh[s][0]
                        pngs += png_output.write_pngs(images, idx, png_n, png_dirs[s])
            else:
                rec = {"sizes": {}}
                for s, (images, labels) in src.sized(idx, sizes).items():
                    r = {"labels": labels}
                    if evs[s] is not None:
                        r["feats"] = evs[s].collector.extract(images)
                    if cfg.eval.save_npz or idx[0] < grid_n:
                        r["images"] = images
                    pngs += png_output.write_pngs(images, idx, png_n, png_dirs[s])
                    rec["sizes"][size_name(s)] = r
                ck.atomic_save(rec, f)
            if first is not None:
                for s in sizes:
                    feats[s].append(rec["sizes"][size_name(s)]["feats"])
            index.append(torch.tensor(idx))
            bar.update(len(idx) * dist.world_size() * len(sizes))
    finally:
        bar.close()
    if reused:
        logger.info(f"resumed: {reused} finished unit(s) of rank {dist.rank()} read from {udir}")
    per_size = {}
    for s in sizes:
        per_size[size_name(s)] = {"n": n}
        if evs[s] is not None:
            _load_features(evs[s], feats[s], index)
            per_size[size_name(s)] = evs[s].compute()
        if png_n:
            per_size[size_name(s)]["png_dir"] = str(png_dirs[s])
    result = {"source": "samples", "n": n, "sizes": per_size}
    dist.barrier()
    if dist.is_main():
        prov = {**_provenance(cfg, src, first), "ref_stats": {size_name(s): refs[s] for s in sizes}}
        written = _write_outputs(cfg, udir, n, bs, grid_n, sizes, result, prov, png_dirs if png_n else None)
        for s in sizes:
            logger.info(f"eval {size_name(s)} " + " ".join(
                f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in per_size[size_name(s)].items()
                if not isinstance(v, list)))
        logger.info("wrote " + ", ".join(str(p) for p in written))
    if png_n:
        logger.info(f"rank {dist.rank()}: {pngs} PNG(s) written in this run")
    dist.barrier()
    return result


def _unit(udir: Path, u: int, name: str) -> dict:
    f = udir / f"unit_{u:06d}.pt"
    rec = ck.load_file(f)["sizes"][name]
    if "images" not in rec:
        raise ValueError(f"{f} holds no {name} images (they are in samples_{name}.npz); delete {udir} to generate "
                         f"them again")
    return rec


def _write_outputs(cfg, udir: Path, n: int, bs: int, grid_n: int, sizes, result: dict, prov: dict,
                   png_dirs: dict | None) -> list[Path]:
    written = [udir / "result.json"]
    atomic_write_text(written[0], json.dumps({**result, "provenance": prov}, indent=1))
    k, per = int(cfg.sample.grid_classes), int(cfg.sample.grid_per_class)
    need = min(grid_n, n)
    for s in sizes:
        name = size_name(s)
        if cfg.eval.save_npz:
            npz = udir / f"samples_{name}.npz"
            if not npz.exists():
                from metrics import SampleBatchWriter
                with SampleBatchWriter(npz) as w:
                    for u in range(math.ceil(n / bs)):
                        rec = _unit(udir, u, name)
                        w.add(rec["images"], rec["labels"])
            written.append(npz)
        if grid_n and n >= grid_n:
            imgs = torch.cat([_unit(udir, u, name)["images"] for u in range(math.ceil(need / bs))])[:need]
            order = [c + k * j for c in range(k) for j in range(per)] if cfg.eval.labels == "balanced" else \
                list(range(grid_n))
            written.append(Path(cfg.output_dir) / f"samples_{name}.png")
            save_grid(imgs[order], k, written[-1])
    if cfg.eval.save_npz:  # the npz files hold the images now: the units keep features (and the grid's images)
        for u in range(math.ceil(n / bs)):
            if u * bs < need:
                continue
            f = udir / f"unit_{u:06d}.pt"
            rec = ck.load_file(f)
            for r in rec["sizes"].values():
                r.pop("images", None)
            ck.atomic_save(rec, f)
    if png_dirs is not None:
        written.extend(png_dirs[s] for s in sizes)
    return written
