"""--mode eval: generate (or reconstruct) images, extract Inception features, compute metrics, at one image size or
several in one run.

Work is cut into units of `eval.batch_size` consecutive sample indices; ranks take contiguous blocks of units,
so the rank-major gather of features is global index order (IS splits are then world-size invariant too).
Every finished unit is saved under `<output_dir>/eval/<tag>/`, where tag hashes everything that determines the
images; an interrupted eval re-run with the same settings resumes from the saved units.

One size is a list of one. A family with `Sampling.sizes` (e.g. NiT's sample.sizes) may ask for several: one
process launch and one Inception load serve them all, every unit is generated at ALL sizes in one call of the
family's sampler (one packed batch of rows of different sizes), and each size's images go to that size's evaluator,
whose reference statistics come from real images brought to that size (ensure_ref_stats, cached per size). Sample i
at size s depends only on (seed, i) and s, so 1 and N processes give the same images, and each size's images are
those a run of that size alone would make.

Outputs under <output_dir>/eval/<tag>/: the unit files, result.json, the first eval.save_png PNGs (png/, or the
folder engine.png_output names inside eval.png_dir), with eval.save_npz the ADM-style samples.npz, and the grid
<output_dir>/samples.png. With several sizes (class Layout) the unit files hold one record per size, result.json
holds {source, n, sizes: {"HxW": {fid, ...}}, provenance}, and the PNG folders, npz files and grids carry the size:
png/<H>x<W>/, samples_<H>x<W>.npz, <output_dir>/samples_<H>x<W>.png.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine import checkpoint as ck
from core import dist
from core.images import save_grid, to_uint8
from core.io import atomic_write_text
from core.seeding import row_generators
from engine.config import key_name, to_container, to_yaml
from engine import png_output
from engine.generate import build_generator, build_tokenizer, decode, file_id, generate
from engine.generate import weights_path as _weights_file
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


def _tag(cfg, weights: str | None, collector) -> str:
    """Hash of everything that determines a unit's images and features: a cached unit is reused only when all agree
    (generator and its weights, sampling, tokenizer, the Inception weights, its dtype and the feature set)."""
    from engine.compile_sampling import sample_key
    key = {"source": cfg.eval.source, "n": int(cfg.eval.n), "bs": int(cfg.eval.batch_size), "seed": int(cfg.seed),
           "sample": sample_key(cfg), "labels": cfg.eval.labels, "tokenizer": to_container(cfg.tokenizer),
           "tokenizer_weights": file_id(cfg.tokenizer.ckpt), "model": to_container(cfg.model),
           "fid_mode": cfg.eval.fid_mode, "precision": cfg.eval.precision,
           "decode_batch": int(cfg.eval.decode_batch), "weights": file_id(weights) or weights,
           "use_ema": bool(cfg.eval.use_ema),
           "size": to_container(cfg.eval.size)}
    if collector is not None:  # None: a sampling run without metrics (its units hold no features)
        key.update({"dtype": collector.dtype, "inception": file_id(collector.weights_path),
                    "features": sorted(collector.features)})
    else:
        key["features"] = []
    h = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"{cfg.eval.source}_n{int(cfg.eval.n)}_{h}"


def latest_result(eval_dir: Path, source: str) -> dict:
    """result.json of the newest eval of `source` under <output_dir>/eval (scripts that summarise runs)."""
    found = sorted(Path(eval_dir).glob(f"{source}_n*/result.json"), key=lambda p: p.stat().st_mtime)
    if not found:
        raise FileNotFoundError(f"no eval result for source '{source}' under {eval_dir}")
    return json.loads(found[-1].read_text())


def my_units(n: int, bs: int) -> list[int]:
    units = math.ceil(n / bs)
    return np.array_split(np.arange(units), dist.world_size())[dist.rank()].tolist()


@dataclass(frozen=True)
class Plan:
    """What an eval of samples works out from the config before anything large loads (runner.preflight, on a model
    built on the meta device), handed to the eval so that it is worked out once per run."""
    sizes: list[tuple[int, int]] | None  # eval_sizes
    settings: Any                        # the family's Sampling.settings


def eval_plan(cfg, fam, model) -> Plan:
    settings = fam.sampling.settings(cfg, model)
    return Plan(eval_sizes(cfg, fam), settings)


class ImageSource:
    """Produces uint8 images for sample indices: generated samples, reconstructions, or random tokens. `sizes`: the
    run's eval_sizes; `settings`: the family's sampling settings when already built (else built on first use: a
    search passes its own with every call and never needs the config's)."""

    def __init__(self, cfg, device, sizes: list | None, settings=None):
        self.cfg, self.device, self.kind = cfg, device, cfg.eval.source
        if self.kind not in SOURCES:
            raise ValueError(f"eval.source must be one of {SOURCES}, got '{self.kind}'")
        self.tok = build_tokenizer(cfg, device)
        self.weights = None
        self.decode_batch = int(cfg.eval.decode_batch)
        if self.kind == "samples":
            self.model, self.fam = build_generator(cfg, device)
            if self.fam.sampling is None:
                raise ValueError(f"family '{self.fam.name}' has no sampler: eval.source=samples is not available")
            self.weights = weights_path(cfg)  # the file read, not its folder
            self._settings = settings
            self.size = sizes[0] if sizes is not None and len(sizes) == 1 else \
                tuple(int(v) for v in cfg.eval.size) if cfg.eval.size is not None else None
            classes = self.fam.sampling.num_classes
            self.num_classes = classes(self.model, cfg) if classes is not None else int(cfg.data.num_classes)
        else:
            self.test = reference_dataset(cfg) if self.kind == "reconstructions" else None
            self.grid = random_token_grid(cfg) if self.kind == "random_tokens" else None
            self.num_classes = int(cfg.data.num_classes)

    @property
    def settings(self):
        if self._settings is None:
            self._settings = self.fam.sampling.settings(self.cfg, self.model)
        return self._settings

    @torch.no_grad()  # not inference_mode: autocast's weight-cast cache works only outside it (engine.generate)
    def __call__(self, indices: list[int], settings=None, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """uint8 images and labels of these sample indices; `settings`/`seed` override the config's (search)."""
        cfg = self.cfg
        seed = int(cfg.seed) if seed is None else int(seed)
        labels = eval_labels(cfg, indices, self.num_classes, seed)
        if self.kind == "samples":
            size = self.size
            with autocast(self.device, str(cfg.eval.precision)):
                out, labels = generate(self.model, self.fam, self.settings if settings is None else settings,
                                       labels.to(self.device), indices, seed, size=size)
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

    @torch.no_grad()  # as __call__
    def at_sizes(self, indices: list[int], sizes: list) -> dict:
        """{size: (uint8 images, labels)} of these sample indices at every size of `sizes`. One size (None: the
        family's own) is a plain call. Several go in ONE call of the family's sampler (one packed batch): sample i
        at size s gets generator (seed, i) and the label of i, so it is the image a run of that size alone makes,
        whatever the other sizes and the number of processes."""
        if len(sizes) == 1:
            return {sizes[0]: self(indices)}
        cfg, seed = self.cfg, int(self.cfg.seed)
        labels = eval_labels(cfg, indices, self.num_classes, seed)
        rows = [(s, j) for s in sizes for j in range(len(indices))]
        gens = [g for _ in sizes for g in row_generators(seed, indices)]
        all_labels = labels.repeat(len(sizes)).to(self.device)
        with autocast(self.device, str(cfg.eval.precision)):
            out, _ = generate(self.model, self.fam, self.settings, all_labels, indices, seed,
                              size=[s for s, _ in rows], generators=gens)
        result = {}
        for k, s in enumerate(sizes):  # Sampling.sample returns a list of per-row samples for a list of sizes
            img = decode(self.tok, torch.stack(out[k * len(indices):(k + 1) * len(indices)]), self.decode_batch)
            result[s] = (to_uint8(img).cpu(), labels.cpu())
        return result


def weights_path(cfg) -> str:
    """The generator weights file an eval of samples reads (a folder resolved by the family; nothing loaded)."""
    return _weights_file(cfg, prefer_ema=bool(cfg.eval.use_ema))


def wants_metrics(cfg) -> bool:
    """eval.metrics=[]: a sampling run; it writes images (PNGs, npz, grid) and loads no Inception."""
    return bool(list(cfg.eval.metrics))


def eval_sizes(cfg, fam) -> list[tuple[int, int]] | None:
    """The image sizes an eval of generated samples covers (Sampling.sizes), None for a family of one size."""
    if cfg.eval.source != "samples" or fam.sampling is None or fam.sampling.sizes is None:
        return None
    return [(int(s[0]), int(s[1])) for s in fam.sampling.sizes(cfg)]


def random_token_grid(cfg) -> tuple[int, int]:
    """The token grid the generator of this config samples (its flavour built on the meta device: no memory)."""
    from models import build_model
    with torch.device("meta"):
        model, fam = build_model(cfg)
    if fam.sampling is None or fam.sampling.shape is None:
        raise ValueError(f"eval.source=random_tokens needs a family that samples discrete tokens; "
                         f"'{fam.name}' does not say its sample shape")
    return tuple(fam.sampling.shape(model))


def reference_dataset(cfg, size=None):
    """The real images behind eval.ref_images (reference statistics, reconstructions): `fmnist-test`, or an
    ImageNet-layout folder. With `size` (H, W) (families that sample any size) every image is brought to H x W by
    datasets.cover_crop's rule (cover, then center-crop); without it, Fashion-MNIST is padded to data.image_size and
    a folder is center-cropped to data.input_res (the resolution the tokenizer and generator work at)."""
    ref = cfg.eval.ref_images
    if size is not None:
        from datasets.sized_reference import SizedReference
        return SizedReference(ref, int(size[0]), int(size[1]), fmnist_dir=cfg.eval.ref_images_path)
    if ref == "fmnist-test":
        from datasets.fmnist import FashionMNIST
        return FashionMNIST(cfg.eval.ref_images_path, "test", size=int(cfg.data.image_size))
    if ref is not None and Path(str(ref)).is_dir():
        from datasets.imagefolder import CenterCropFolder
        size = cfg.data.get("input_res", None) if "data" in cfg else None
        if size is None:
            raise ValueError(f"eval.ref_images={ref} is a folder: its images are center-cropped to data.input_res, "
                             f"which family '{cfg.family}' does not have")
        return CenterCropFolder(str(ref), int(size))
    raise ValueError(f"eval.ref_images must be 'fmnist-test' or an image folder (<class>/<images>), got {ref!r}")


def _inception(cfg, device):
    from metrics import build_fid_inception, find_fid_weights
    path = find_fid_weights(cfg.eval.inception_weights)
    net = build_fid_inception(path, device=device)
    net.weights_path = str(path)
    return net


def build_evaluator(cfg, device, ref_stats, inception=None, quiet: bool = False):
    from metrics import Evaluator
    inc = _inception(cfg, device) if inception is None else inception
    ev = Evaluator(inc, mode=cfg.eval.fid_mode, ref=ref_stats, want=list(cfg.eval.metrics),
                   device=device, dtype=cfg.eval.inception_dtype, channels_last=True,
                   is_splits=int(cfg.eval.is_splits), is_std_ddof=int(cfg.eval.is_std_ddof),
                   is_shuffle=cfg.eval.is_shuffle)
    ev.collector.weights_path = inc.weights_path
    if not quiet:
        logger.info(f"FID-Inception {inc.weights_path}, {ev.collector.dtype} "
                    f"({getattr(ev.collector, 'dtype_reason', '')})")
    return ev


def size_name(size) -> str:
    return f"{int(size[0])}x{int(size[1])}"


def _ref_key(cfg, device, ds, n: int, size) -> dict:
    """Everything that determines reference statistics: a cached file is reused only when all of it agrees."""
    from core.precision import resolve_precision
    from datasets.cover_crop import RULE
    from metrics import find_fid_weights
    source = ds.source_id() if hasattr(ds, "source_id") else [str(cfg.eval.ref_images), cfg.eval.ref_images_path,
                                                               to_container(cfg.get("data", None))]
    key = {"ref_images": str(cfg.eval.ref_images), "source": source, "n": int(n),
           "size": None if size is None else [int(size[0]), int(size[1])],
           "rule": RULE if size is not None else "family-default", "fid_mode": cfg.eval.fid_mode,
           "inception": file_id(find_fid_weights(cfg.eval.inception_weights)),
           "inception_dtype": resolve_precision(str(cfg.eval.inception_dtype), device, "inception")[0]}
    return json.loads(json.dumps(key, default=str))  # as it reads back from the key file


def _cache_name(cfg, key: dict, size) -> str:
    ref = str(cfg.eval.ref_images)
    slug = ref if ref == "fmnist-test" else "".join(c if c.isalnum() or c in "-_" else "-" for c in Path(ref).name)
    h = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return f"ref_{slug}{'_' + size_name(size) if size is not None else ''}_n{key['n']}_{h}.npz"


def missing_ref_help(cfg) -> str:
    """Where reference statistics come from: the family's README file, or statistics made from real images."""
    from models import get_family
    sampling = get_family(cfg.family).sampling
    hint = sampling.ref_stats_hint if sampling is not None else ""
    return ((hint + "; " if hint else "") +
            "or make statistics of real images with `python scripts/make_fid_stats.py --folder <images> --out "
            "<stats>.npz` (or set eval.ref_images=<image folder> or fmnist-test to make and cache them); "
            "eval.metrics=[] writes the images without any metric")


def ref_stats_is_folder(path) -> bool:
    return path is None or str(path).endswith(("/", os.sep)) or Path(str(path)).is_dir()


def ensure_ref_stats(cfg, device, size=None, multi: bool = False, inception=None) -> str | None:
    """The reference statistics file of this run (at image size `size`, for families that sample any size).

    eval.ref_stats names a .npz: used as is when it exists (unless the key file written beside it when it was made
    from eval.ref_images disagrees with the current settings: an error), else made from eval.ref_images. It names a
    folder (an existing one, or a path ending in '/'), or is null with eval.ref_images set: the statistics are
    cached in that folder (null: <output_dir>/ref_stats/) under a name holding the source, the size, the image count
    and a hash of everything that determines them (datasets.cover_crop's rule, Inception weights and dtype), so a
    stale file is never reused. `multi`: the run evaluates several sizes, so one file cannot serve them all."""
    path, src = cfg.eval.ref_stats, cfg.eval.ref_images
    needs = any(m in cfg.eval.metrics for m in ("fid", "sfid", "pr"))
    folder = ref_stats_is_folder(path)
    if not folder and multi:
        raise ValueError(f"eval.ref_stats={path} names one file, but this run evaluates several sizes: give a folder "
                         f"(ending in '/') or null, with eval.ref_images, to cache statistics per size")
    if src is None:
        if path is None:
            if needs:
                raise ValueError(f"{key_name('eval.ref_stats', cfg)} is not set: {', '.join(cfg.eval.metrics)} "
                                 f"need(s) reference statistics; {missing_ref_help(cfg)}")
            return None
        if folder or not Path(path).exists():
            raise FileNotFoundError(f"reference statistics not found: {path} ({key_name('eval.ref_stats', cfg)}); "
                                    f"{missing_ref_help(cfg)}")
        return path
    if not folder and Path(path).exists() and not Path(str(path) + ".json").exists():
        return path  # a given file made elsewhere: nothing to compare it with
    ds = reference_dataset(cfg, size)
    n = min(int(cfg.eval.ref_n), len(ds))
    key = _ref_key(cfg, device, ds, n, size)
    target = Path(path) / _cache_name(cfg, key, size) if folder and path is not None else \
        Path(cfg.output_dir) / "ref_stats" / _cache_name(cfg, key, size) if folder else Path(path)
    side = Path(str(target) + ".json")
    if target.exists():
        if side.exists():
            old = json.loads(side.read_text())
            diff = sorted(k for k in set(old) | set(key) if old.get(k) != key.get(k))
            if diff:
                raise ValueError(f"{target} was made with other settings ({', '.join(diff)} differ); delete it or "
                                 f"set eval.ref_stats to a folder, where statistics are cached per setting")
        logger.info(f"reference statistics {target} (cached)")
        return str(target)
    from metrics import FeatureCollector, features_to_stats, save_stats
    coll = FeatureCollector(_inception(cfg, device) if inception is None else inception, cfg.eval.fid_mode,
                            ("pool3",), device, cfg.eval.inception_dtype, channels_last=True)
    bs = int(cfg.eval.batch_size)
    what = f"reference stats{' ' + size_name(size) if size is not None else ''}"
    for u in progress(iterable=my_units(n, bs), desc=what):
        idx = torch.arange(u * bs, min(n, (u + 1) * bs))
        coll.update(to_uint8(ds.get_batch(idx)["image"]), index=idx)
    st = features_to_stats(coll.gather())
    if dist.is_main():
        save_stats(target, st["mu"], st["sigma"])
        atomic_write_text(side, json.dumps(key, indent=1, default=str))
        logger.info(f"reference statistics of {n} real images"
                    f"{' at ' + size_name(size) if size is not None else ''} written to {target}")
    dist.barrier()
    return str(target)


class Layout:
    """How one eval of `sizes` names its pieces. One size (None: the family's own) keeps the flat names: a unit file
    is one record {labels, feats, images}, samples.npz, samples.png, png/. Several sizes nest a unit's records by
    size ({"sizes": {"HxW": record}}) and put the size in every other name."""

    def __init__(self, sizes: list[tuple[int, int]] | None):
        self.sizes = list(sizes) if sizes else [None]
        self.several = len(self.sizes) > 1
        if len(set(self.sizes)) != len(self.sizes):
            raise ValueError(f"the sample sizes {[size_name(s) for s in self.sizes]} repeat a size")

    def suffix(self, size) -> str:
        return f"_{size_name(size)}" if self.several else ""

    def parts(self, rec: dict) -> dict:
        """{size: record} of a unit file's content."""
        return {s: rec["sizes"][size_name(s)] for s in self.sizes} if self.several else {self.sizes[0]: rec}

    def record(self, parts: dict) -> dict:
        return {"sizes": {size_name(s): parts[s] for s in self.sizes}} if self.several else parts[self.sizes[0]]

    def png_folder(self, cfg, udir: Path, size, weights) -> Path:
        return png_output.png_folder(cfg, udir, size, several=self.several, weights=weights)


def evaluate(cfg, plan: Plan | None = None) -> dict:
    """`plan`: the preflight's (train.py); None: worked out here, from the generator once it is built."""
    device = dist.init_distributed(cfg.device)
    out = Path(cfg.output_dir)
    setup_logging(str(out))
    if dist.is_main():
        logger.info("config:\n" + to_yaml(cfg))
    from models import get_family
    asked = plan.sizes if plan is not None else eval_sizes(cfg, get_family(cfg.family))
    lay = Layout(asked)
    sizes = lay.sizes
    n, bs = int(cfg.eval.n), int(cfg.eval.batch_size)
    png_n = n if int(cfg.eval.save_png) < 0 else min(n, int(cfg.eval.save_png))
    if png_n and cfg.eval.png_dir is not None:  # refused before anything is loaded or generated
        weights = weights_path(cfg) if cfg.eval.source == "samples" else None
        for s in sizes:
            png_output.claim(lay.png_folder(cfg, out, s, weights), png_output.image_settings(cfg, weights, s), cfg)
    refs, evs = {s: None for s in sizes}, {s: None for s in sizes}
    if wants_metrics(cfg):
        # several sizes share one Inception; one size loads it once its reference statistics are found
        inc = _inception(cfg, device) if lay.several else None
        refs = {s: ensure_ref_stats(cfg, device, size=s, multi=lay.several, inception=inc) for s in sizes}
        evs = {s: build_evaluator(cfg, device, refs[s], inception=inc, quiet=k > 0) for k, s in enumerate(sizes)}
    elif dist.is_main():
        logger.info("eval.metrics=[]: images only, no FID-Inception loaded")
    src = ImageSource(cfg, device, asked, plan.settings if plan is not None else None)
    sequential = src.kind == "samples" and src.fam.sampling.replays(src.settings)
    if sequential and lay.several:  # (building the settings also checks them before any image is made)
        raise ValueError("settings that replay one process's random stream cannot sample several sizes in one run")
    if sequential and dist.world_size() > 1:
        raise ValueError(f"these sampling settings (sample.rng=official) replay one process's random stream in "
                         f"order: run with 1 process, not {dist.world_size()}")
    first = evs[sizes[0]]
    tag = _tag(cfg, src.weights, first.collector if first is not None else None)
    udir = out / "eval" / tag
    png_dirs = {s: lay.png_folder(cfg, udir, s, src.weights) for s in sizes}
    if png_n and cfg.eval.png_dir is None:
        for s in sizes:
            png_output.claim(png_dirs[s], png_output.image_settings(cfg, src.weights, s), cfg)
    units = my_units(n, bs)
    grid_n = int(cfg.sample.grid_classes) * int(cfg.sample.grid_per_class) if src.kind == "samples" else 0
    feats, index, reused, pngs = {s: [] for s in sizes}, [], 0, 0
    mine = sum(min(n, (u + 1) * bs) - u * bs for u in units)
    bar = progress(total=mine * dist.world_size() * len(sizes), unit="img",
                   desc=f"eval {len(sizes)} sizes" if lay.several else f"eval {src.kind}")
    try:
        for u in units:
            f = udir / f"unit_{u:06d}.pt"
            idx = list(range(u * bs, min(n, (u + 1) * bs)))
            if cfg.eval.resume and f.exists() and not sequential:  # a replayed stream cannot skip a unit
                parts = lay.parts(ck.load_file(f))
                reused += 1
                if any(png_output.missing(idx, png_n, png_dirs[s]) for s in sizes):  # e.g. a new png_dir
                    fresh = None  # the unit's images again, when the unit file no longer holds them
                    for s in sizes:
                        if "images" not in parts[s] and fresh is None:
                            fresh = src.at_sizes(idx, sizes)
                        images = parts[s]["images"] if "images" in parts[s] else fresh[s][0]
                        pngs += png_output.write_pngs(images, idx, png_n, png_dirs[s])
            else:
                parts = {}
                for s, (images, labels) in src.at_sizes(idx, sizes).items():
                    r = {"labels": labels}
                    if evs[s] is not None:
                        r["feats"] = evs[s].collector.extract(images)
                    if cfg.eval.save_npz or idx[0] < grid_n:
                        r["images"] = images
                    pngs += png_output.write_pngs(images, idx, png_n, png_dirs[s])
                    parts[s] = r
                ck.atomic_save(lay.record(parts), f)
            if first is not None:
                for s in sizes:
                    feats[s].append(parts[s]["feats"])
            index.append(torch.tensor(idx))
            bar.update(len(idx) * dist.world_size() * len(sizes))
    finally:
        bar.close()  # before any error line
    if reused:
        logger.info(f"resumed: {reused} finished unit(s) of rank {dist.rank()} read from {udir}")
    scores = {}
    for s in sizes:
        scores[s] = {"n": n}
        if evs[s] is not None:
            _load_features(evs[s], feats[s], index)
            scores[s].update(evs[s].compute())
        if png_n:
            scores[s]["png_dir"] = str(png_dirs[s])
    if lay.several:
        result = {"source": src.kind, "n": n, "sizes": {size_name(s): scores[s] for s in sizes}}
        shown = {f"eval {size_name(s)} ": scores[s] for s in sizes}
    else:
        result = {"source": src.kind, **scores[sizes[0]]}
        shown = {"eval ": result}
    dist.barrier()
    if dist.is_main():
        written = _write_outputs(cfg, udir, n, bs, grid_n, lay, result, _provenance(cfg, src, first, lay, refs),
                                 png_dirs if png_n else None)
        for head, values in shown.items():
            logger.info(head + " ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                        for k, v in values.items() if not isinstance(v, list)))
        logger.info("wrote " + ", ".join(str(p) for p in written))
    if png_n:
        where = "" if lay.several else f" to {png_dirs[sizes[0]]}"
        logger.info(f"rank {dist.rank()}: {pngs} PNG(s) written{where} in this run")
    dist.barrier()
    return result


def _provenance(cfg, src, ev, lay: Layout, refs: dict) -> dict:
    """What made the numbers (or the images, without metrics), for result.json."""
    ref_stats = {size_name(s): refs[s] for s in lay.sizes} if lay.several else \
        cfg.eval.ref_stats if ev is not None else None
    return {"generator_weights": src.weights, "tokenizer": to_container(cfg.tokenizer),
            "sample": to_container(cfg.sample) if "sample" in cfg else None, "seed": int(cfg.seed),
            "labels": cfg.eval.labels, "precision": cfg.eval.precision,
            "inception_weights": ev.collector.weights_path if ev is not None else None,
            "inception_dtype": ev.collector.dtype if ev is not None else None,
            "fid_mode": cfg.eval.fid_mode, "ref_stats": ref_stats,
            "size": list(src.size) if getattr(src, "size", None) is not None else None}  # eval.size, as sampled


def _load_features(ev, feats: list[dict], index: list[torch.Tensor]) -> None:
    """Hand this rank's unit features (fresh or read back from disk) to the evaluator in one piece."""
    from metrics.features import STATE_FORMAT
    c = ev.collector
    cat = {f: torch.cat([u[f] for u in feats]) if feats else torch.zeros(0, c.dims[f]) for f in c.features}
    ev.load_state_dict({"format": STATE_FORMAT, "mode": c.mode, "size": c.size, "features": cat,
                        "index": torch.cat(index) if index else torch.zeros(0, dtype=torch.long)})


def _write_outputs(cfg, udir: Path, n: int, bs: int, grid_n: int, lay: Layout, result: dict, provenance: dict,
                   png_dirs: dict | None) -> list[Path]:
    """result.json and per size the ADM-style npz (streamed unit by unit), the grid and the PNG folder; with the npz
    written, the unit files keep only their features (and the grid's images): no image is stored twice."""
    written = [udir / "result.json"]
    atomic_write_text(written[0], json.dumps({**result, "provenance": provenance}, indent=1))
    k, per = int(cfg.sample.grid_classes), int(cfg.sample.grid_per_class)
    need = min(grid_n, n)
    for s in lay.sizes:
        if cfg.eval.save_npz:
            npz = udir / f"samples{lay.suffix(s)}.npz"
            if not npz.exists():
                from metrics import SampleBatchWriter
                with SampleBatchWriter(npz) as w:
                    for u in range(math.ceil(n / bs)):
                        rec = _unit_with_images(udir, u, lay, s)
                        w.add(rec["images"], rec["labels"])
            written.append(npz)
        if grid_n and n >= grid_n:
            imgs = torch.cat([_unit_with_images(udir, u, lay, s)["images"]
                              for u in range(math.ceil(need / bs))])[:need]
            order = [c + k * j for c in range(k) for j in range(per)] if cfg.eval.labels == "balanced" else \
                list(range(grid_n))
            written.append(Path(cfg.output_dir) / f"samples{lay.suffix(s)}.png")
            save_grid(imgs[order], k, written[-1])
    if cfg.eval.save_npz:
        _drop_unit_images(udir, n, bs, need, lay)
    if png_dirs is not None:
        written.extend(png_dirs[s] for s in lay.sizes)
    return written


def _unit_with_images(udir: Path, u: int, lay: Layout, size) -> dict:
    f = udir / f"unit_{u:06d}.pt"
    rec = lay.parts(ck.load_file(f))[size]
    if "images" not in rec:
        what = f"{size_name(size)} images" if lay.several else "images"
        raise ValueError(f"{f} holds no {what} (they are in samples{lay.suffix(size)}.npz; eval.save_png or the "
                         f"grid asked for more than were kept); delete {udir} to generate them again")
    return rec


def _drop_unit_images(udir: Path, n: int, bs: int, keep: int, lay: Layout) -> None:
    for u in range(math.ceil(n / bs)):
        if u * bs < keep:
            continue
        f = udir / f"unit_{u:06d}.pt"
        rec = ck.load_file(f)
        parts = lay.parts(rec).values()
        if any("images" in r for r in parts):
            for r in parts:
                r.pop("images", None)
            ck.atomic_save(rec, f)
