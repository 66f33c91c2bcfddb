"""--mode eval: generate (or reconstruct) images, extract Inception features, compute metrics.

Work is cut into units of `eval.batch_size` consecutive sample indices; ranks take contiguous blocks of units,
so the rank-major gather of features is global index order (IS splits are then world-size invariant too).
Every finished unit is saved under `<output_dir>/eval/<tag>/`, where tag hashes everything that determines the
images; an interrupted eval re-run with the same settings resumes from the saved units.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from pathlib import Path

import numpy as np
import torch

from engine import checkpoint as ck
from core import dist
from core.images import save_grid, to_uint8
from core.io import atomic_write_text
from core.seeding import row_generators
from engine.config import to_container
from engine.generate import build_generator, build_tokenizer, decode, generate
from engine.logging import logger, progress, setup_logging
from engine.precision import autocast

SOURCES = ("samples", "reconstructions", "random_tokens")


def eval_labels(cfg, indices, num_classes: int, seed: int | None = None) -> torch.Tensor:
    """Label of sample i: i mod classes (balanced) or drawn from (seed, i) alone (random); seed defaults to cfg.seed."""
    seed = int(cfg.seed) if seed is None else int(seed)
    if cfg.eval.labels == "balanced":
        return torch.tensor([i % num_classes for i in indices], dtype=torch.long)
    if cfg.eval.labels == "random":
        return torch.tensor([int(torch.randint(num_classes, (1,), generator=g)) for g in
                             row_generators(seed + 777, indices)], dtype=torch.long)
    raise ValueError(f"eval.labels must be 'balanced' or 'random', got '{cfg.eval.labels}'")


def _tag(cfg, weights: str | None) -> str:
    key = {"source": cfg.eval.source, "n": int(cfg.eval.n), "bs": int(cfg.eval.batch_size), "seed": int(cfg.seed),
           "sample": to_container(cfg.sample), "labels": cfg.eval.labels, "tokenizer": to_container(cfg.tokenizer),
           "model": to_container(cfg.model), "fid_mode": cfg.eval.fid_mode, "dtype": cfg.eval.inception_dtype,
           "precision": cfg.eval.precision,
           "weights": [weights, os.path.getmtime(weights) if weights and os.path.exists(weights) else None]}
    h = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{cfg.eval.source}_n{int(cfg.eval.n)}_{h}"


def my_units(n: int, bs: int) -> list[int]:
    units = math.ceil(n / bs)
    return np.array_split(np.arange(units), dist.world_size())[dist.rank()].tolist()


class ImageSource:
    """Produces uint8 images for sample indices: generated samples, reconstructions, or random tokens."""

    def __init__(self, cfg, device):
        self.cfg, self.device, self.kind = cfg, device, cfg.eval.source
        if self.kind not in SOURCES:
            raise ValueError(f"eval.source must be one of {SOURCES}, got '{self.kind}'")
        self.tok = build_tokenizer(cfg, device)
        self.weights = None
        self.decode_batch = int(cfg.eval.decode_batch)
        if self.kind == "samples":
            self.model, self.fam = build_generator(cfg, device)
            if "eval" not in self.fam.modes:
                raise ValueError(f"family '{self.fam.name}' has no sampler: eval.source=samples is not available")
            self.weights = cfg.eval.pretrained_path or str(ck.latest_checkpoint(Path(cfg.output_dir) / "checkpoints"))
            self.settings = self.fam.settings(cfg, self.model)
            self.num_classes = (self.fam.num_classes(self.model, cfg) if self.fam.num_classes is not None
                                else int(cfg.data.num_classes))
        else:
            self.test = reference_dataset(cfg) if self.kind == "reconstructions" else None
            self.grid = random_token_grid(cfg) if self.kind == "random_tokens" else None
            self.num_classes = int(cfg.data.num_classes)

    @torch.inference_mode()
    def __call__(self, indices: list[int], settings=None, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and labels of these sample indices; `settings`/`seed` override the config's (search)."""
        cfg = self.cfg
        seed = int(cfg.seed) if seed is None else int(seed)
        labels = eval_labels(cfg, indices, self.num_classes, seed)
        if self.kind == "samples":
            with autocast(self.device, str(cfg.eval.precision)):
                out = generate(self.model, self.fam, self.settings if settings is None else settings,
                               labels.to(self.device), indices, seed)
            img = decode(self.tok, out, self.decode_batch)
        elif self.kind == "reconstructions":
            if max(indices) >= len(self.test):
                raise ValueError(f"eval.n {cfg.eval.n} exceeds the {len(self.test)} test images")
            b = self.test.get_batch(torch.tensor(indices))
            labels = b["label"]
            img = decode(self.tok, self.tok.encode(b["image"].to(self.device)), self.decode_batch)
        else:
            h, w = self.grid
            toks = torch.stack([torch.randint(self.tok.codebook_size, (h * w,), generator=g)
                                for g in row_generators(seed, indices)])
            img = decode(self.tok, toks.reshape(len(indices), h, w), self.decode_batch)
        return to_uint8(img).cpu(), labels.cpu()


def random_token_grid(cfg) -> tuple[int, int]:
    """The token grid the generator of this config samples (its flavour built on the meta device: no memory)."""
    from models import build_model
    with torch.device("meta"):
        model, fam = build_model(cfg)
    if fam.sample_shape is None:
        raise ValueError(f"eval.source=random_tokens needs a family that samples discrete tokens; "
                         f"'{fam.name}' does not say its sample shape")
    return tuple(fam.sample_shape(model))


def reference_dataset(cfg):
    """The real images behind eval.ref_images (reference statistics, reconstructions)."""
    if cfg.eval.ref_images != "fmnist-test":
        raise ValueError(f"eval.ref_images must be 'fmnist-test' to use real test images, got {cfg.eval.ref_images!r}")
    from datasets.fmnist import FashionMNIST
    return FashionMNIST(cfg.eval.ref_images_path, "test", size=int(cfg.data.image_size))


def _inception(cfg, device):
    from metrics import build_fid_inception
    return build_fid_inception(cfg.eval.inception_weights, device=device)


def build_evaluator(cfg, device, ref_stats):
    from metrics import Evaluator
    return Evaluator(_inception(cfg, device), mode=cfg.eval.fid_mode, ref=ref_stats, want=list(cfg.eval.metrics),
                     device=device, dtype=cfg.eval.inception_dtype, channels_last=True)


def ensure_ref_stats(cfg, device) -> str | None:
    """Return eval.ref_stats; make it first from eval.ref_images when it does not exist (cached on disk)."""
    path = cfg.eval.ref_stats
    if path is None or Path(path).exists():
        if path is None and any(m in cfg.eval.metrics for m in ("fid", "sfid", "pr")):
            raise ValueError("eval.ref_stats (--reference_image_path) is not set: FID needs reference statistics")
        return path
    if cfg.eval.ref_images is None:
        raise FileNotFoundError(f"reference statistics not found: {path} (set eval.ref_images=fmnist-test to "
                                f"make them from the Fashion-MNIST test split, or give an existing .npz)")
    from metrics import FeatureCollector, features_to_stats, save_stats
    ds = reference_dataset(cfg)
    n = min(int(cfg.eval.ref_n), len(ds))
    coll = FeatureCollector(_inception(cfg, device), cfg.eval.fid_mode, ("pool3",), device,
                            cfg.eval.inception_dtype, channels_last=True)
    bs = int(cfg.eval.batch_size)
    for u in progress(iterable=my_units(n, bs), desc="reference stats"):
        idx = torch.arange(u * bs, min(n, (u + 1) * bs))
        coll.update(to_uint8(ds.get_batch(idx)["image"]), index=idx)
    st = features_to_stats(coll.gather())
    if dist.is_main():
        save_stats(path, st["mu"], st["sigma"])
        logger.info(f"reference statistics of {n} test images written to {path}")
    dist.barrier()
    return path


def evaluate(cfg) -> dict:
    device = dist.init_distributed(cfg.device)
    out = Path(cfg.output_dir)
    setup_logging(str(out))
    ref = ensure_ref_stats(cfg, device)
    src = ImageSource(cfg, device)
    n, bs = int(cfg.eval.n), int(cfg.eval.batch_size)
    tag = _tag(cfg, src.weights)
    udir = out / "eval" / tag
    ev = build_evaluator(cfg, device, ref)
    units = my_units(n, bs)
    reused, feats, index = 0, [], []
    grid_n = int(cfg.sample.grid_classes) * int(cfg.sample.grid_per_class) if src.kind == "samples" else 0
    for u in progress(iterable=units, desc=f"eval {src.kind}"):
        f = udir / f"unit_{u:06d}.pt"
        idx = list(range(u * bs, min(n, (u + 1) * bs)))
        if cfg.eval.resume and f.exists():
            rec = ck.load_file(f)
            reused += 1
        else:
            images, labels = src(idx)
            rec = {"feats": ev.collector.extract(images), "labels": labels}
            if cfg.eval.save_npz or idx[0] < max(grid_n, int(cfg.eval.save_png)):
                rec["images"] = images
            ck.atomic_save(rec, f)
        feats.append(rec["feats"])
        index.append(torch.tensor(idx))
    _load_features(ev, feats, index)
    if reused:
        logger.info(f"resumed: {reused} finished unit(s) of rank {dist.rank()} read from {udir}")
    result = ev.compute()
    result = {"source": src.kind, "n": n, **result}
    dist.barrier()
    if dist.is_main():
        _write_outputs(cfg, udir, n, bs, grid_n, result)
        logger.info("eval " + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in result.items()))
    dist.barrier()
    return result


def _load_features(ev, feats: list[dict], index: list[torch.Tensor]) -> None:
    """Hand this rank's unit features (fresh or read back from disk) to the evaluator in one piece."""
    from metrics.features import STATE_FORMAT
    c = ev.collector
    cat = {f: torch.cat([u[f] for u in feats]) if feats else torch.zeros(0, c.dims[f]) for f in c.features}
    ev.load_state_dict({"format": STATE_FORMAT, "mode": c.mode, "size": c.size, "features": cat,
                        "index": torch.cat(index) if index else torch.zeros(0, dtype=torch.long)})


def _write_outputs(cfg, udir: Path, n: int, bs: int, grid_n: int, result: dict) -> None:
    units = math.ceil(n / bs)
    atomic_write_text(udir / "result.json", json.dumps(result, indent=1))
    need = max(grid_n, int(cfg.eval.save_png))
    if cfg.eval.save_npz or need:
        imgs, labels = [], []
        for u in range(units if cfg.eval.save_npz else math.ceil(min(need, n) / bs)):
            rec = ck.load_file(udir / f"unit_{u:06d}.pt")
            imgs.append(rec["images"])
            labels.append(rec["labels"])
        imgs, labels = torch.cat(imgs), torch.cat(labels)
        if grid_n and len(imgs) >= grid_n:
            k, per = int(cfg.sample.grid_classes), int(cfg.sample.grid_per_class)
            order = [c + k * j for c in range(k) for j in range(per)] if cfg.eval.labels == "balanced" else \
                list(range(grid_n))
            save_grid(imgs[order], k, Path(cfg.output_dir) / "samples.png")
        if int(cfg.eval.save_png):
            from PIL import Image
            pdir = udir / "png"
            pdir.mkdir(exist_ok=True)
            for i in range(min(int(cfg.eval.save_png), len(imgs))):
                a = imgs[i].permute(1, 2, 0).numpy()
                Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(pdir / f"{i:06d}.png")
        if cfg.eval.save_npz:
            from metrics import write_sample_batch
            write_sample_batch(udir / "samples.npz", imgs, labels)
