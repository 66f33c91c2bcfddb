"""Family `nit` (models/nit/model.py: the packed native-resolution flow-matching transformer): the record the engine drives.

Training data: LPFHP packs of pre-extracted latents (datasets/nit_packs.py) named by cfg.data (data-meta JSONL,
sampler-meta JSON, latent folders). `train.batch_size` counts PACKS per optimiser step (all processes): each rank
takes batch_size / world packs per step, one per micro-batch (the official gradient accumulation), the pack of
micro-batch m at step s being pack stream position s·k + m of that rank (k = packs per rank per step), a pure
function of (seed, step, rank): a resumed run trains on exactly the packs of an uninterrupted one.

Loss: models.nit.loss (token-mean MSE + direction term, logit-normal t, label drop 0.1) plus REPA when
`loss.repa_encoder` names a frozen image encoder and loss.repa_coeff > 0 (models.nit.repa_encoders: a .pt2/TorchScript
export, a local RADIO checkpoint, or any 'package.module:factory' mapping images to a feature grid); otherwise the
REPA term is off, no encoder is loaded, and the projector is frozen (it would get no gradient; DDP needs every
trained parameter used).

Sampling: samplers.flow stepping NiT's guided velocity (models.nit.sampling) with cfg.sample (`--mode ode|sde
--num-steps --cfg-scale --guidance-low --guidance-high --heun`, `--height --width`); `sample.sizes=[32x32,...]`
makes `--mode eval` sample every size in one packed batch per unit, with images, grids and metrics per size
(engine.evaluate). `--cfg-scale` is the official w of u + w·(c − u) (w = 1: no guidance), carried as
NiTSampling.cfg_scale into the velocity function. The output is latents in the tokenizer's scaled space (DC-AE: times 0.41407),
which tokenizer.decode turns into images.
"""
from __future__ import annotations

import os
from pathlib import Path
from dataclasses import dataclass

import torch
from torch import nn

from models.family import Family, Sampling, Training, TrainContext
from models.nit.model import FLAVOURS, PACK_LEN
from models.nit.loss import nit_loss

SWITCH_HELP = "true/false (a bare official switch such as --heun also turns it on)"


def decoder_class(kind):
    """The tokenizer class that decodes NiT's latents for tokenizer.kind (dcae | pixels), None for another kind: its
    class attributes (downsample, latent_channels) give the latent geometry without loading any weights."""
    if kind == "dcae":
        from tokenizer.dcae import DCAETokenizer
        return DCAETokenizer
    if kind == "pixels":
        from tokenizer.pixels import PixelTokenizer
        return PixelTokenizer
    return None


def switch(value, key: str) -> bool:
    """A config switch that an official store-true flag may set (the bare flag sets True); null is off."""
    if value is None or isinstance(value, bool):
        return bool(value)
    raise ValueError(f"config key '{key}' must be {SWITCH_HELP}, got {value!r}")


def _net(model: nn.Module) -> nn.Module:
    return getattr(model, "module", model)


def _patch_size(cfg) -> int:
    p = cfg.model.get("patch_size", None)
    return int(p) if p is not None else int(FLAVOURS[cfg.model.flavour].defaults["patch_size"])


# ------------------------------------------------------------------------------------------------------- data
def max_seq_len(cfg) -> int:
    v = cfg.data.max_seq_len
    if v is not None:
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"config key 'data.max_seq_len' must be an integer >= 1 (tokens per pack), got {v!r}")
        return int(v)
    if cfg.model.flavour not in PACK_LEN:
        raise ValueError(f"data.max_seq_len is not set and flavour '{cfg.model.flavour}' has no official pack length")
    return PACK_LEN[cfg.model.flavour]


def pack_dataset(cfg, split: str = "train"):
    """data.kind packs: data.data_meta (JSONL) + data.sampler_meta (JSON) + data.latent_dirs (a folder with one
    sub-folder per data type, or {type: folder})."""
    d = cfg.data
    if d.kind != "packs":
        raise ValueError(f"family 'nit' trains on packed latents: data.kind must be 'packs', got '{d.kind}'")
    for key in ("data_meta", "sampler_meta", "latent_dirs"):
        if d[key] is None:
            raise ValueError(f"data.{key} is not set (family 'nit' reads a data-meta JSONL, its sampler-meta JSON "
                             f"from scripts/pack_dataset.py and the latent folders)")
    lc = cfg.loss
    if lc.repa_encoder is not None and float(lc.repa_coeff) == 0:
        raise ValueError(f"loss.repa_coeff=0 turns the REPA term off, but loss.repa_encoder={lc.repa_encoder} is "
                         f"set and would be ignored: set loss.repa_encoder=null to train without REPA, or "
                         f"loss.repa_coeff > 0 to use it")
    if repa_on(cfg):  # the encoder's files, before any latent is read (the encoder itself loads at the first step)
        from models.nit.repa_encoders import check_files
        check_files(str(lc.repa_encoder), str(lc.get("repa_kind", "auto")),
                    None if lc.get("radio_repo") is None else str(lc.radio_repo))
        _image_dir(cfg)
    from omegaconf import DictConfig, OmegaConf

    from datasets.nit_packs import NiTPackDataset
    dirs = OmegaConf.to_container(d.latent_dirs) if isinstance(d.latent_dirs, DictConfig) else str(d.latent_dirs)
    if isinstance(dirs, str) and not os.path.isdir(dirs):
        raise FileNotFoundError(f"data.latent_dirs {dirs} not found (a folder with one sub-folder per data type, as "
                                f"extract_imagenet_feature.py writes it)")
    ds = NiTPackDataset(str(d.data_meta), str(d.sampler_meta), dirs, max_seq_len(cfg), _patch_size(cfg),
                        seed=int(cfg.seed), flip=bool(d.flip))
    if repa_on(cfg):
        ds.image_dir = _image_dir(cfg)
    return ds


def packs_per_rank(cfg, world: int) -> int:
    """Packs per rank and step; train.batch_size is divisible by world x grad_accum (the engine's preflight)."""
    bs, accum = int(cfg.train.batch_size), int(cfg.train.grad_accum)
    k = bs // world
    if accum not in (1, k):
        raise ValueError(f"train.grad_accum {accum} does not fit train.batch_size {bs} packs over {world} "
                         f"process(es): each process takes {k} pack(s) per step, one per micro-batch; set "
                         f"train.grad_accum to 1 or {k}")
    return k


def pack_batches(ds, cfg, step: int, rank: int, world: int) -> list[dict]:
    """This rank's packs of global step `step`, one per micro-batch (module docstring)."""
    k = packs_per_rank(cfg, world)
    out = []
    for m in range(k):
        batch = ds.batch_for(step * k + m, rank, world)
        if getattr(ds, "image_dir", None) is not None:
            batch["images"] = load_pack_images(ds, batch["indices"].tolist())
        out.append(batch)
    return out


def to_device(batch: dict, device: torch.device) -> dict:
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            out[k] = v.to(device, non_blocking=True)
        elif isinstance(v, list) and v and torch.is_tensor(v[0]):
            out[k] = [t.to(device, non_blocking=True) for t in v]
        else:
            out[k] = v
    return out


def batch_rows(batch: dict) -> int:
    """Images in the pack."""
    return int(batch["label"].shape[0])


# ------------------------------------------------------------------------------------------------------ REPA
def repa_on(cfg) -> bool:
    return cfg.loss.repa_encoder is not None and float(cfg.loss.repa_coeff) > 0


def _image_dir(cfg) -> str:
    d = cfg.data.image_dir
    if d is None or not os.path.isdir(str(d)):
        raise FileNotFoundError(f"REPA (loss.repa_encoder) needs the training images: data.image_dir "
                                f"{'is not set' if d is None else str(d) + ' not found'} (the image folder the "
                                f"data-meta's image_file paths are relative to)")
    return str(d)


def load_pack_images(ds, indices: list[int]) -> list[torch.Tensor]:
    """Float (3, H, W) in [0, 1] per image, at the size it was encoded: ADM center crop for fixed-RxR types, the
    stored image_w x image_h (NiT's native resize) for native-resolution ones."""
    import numpy as np
    from PIL import Image

    from datasets.transforms import center_crop_arr, to_unit
    out = []
    for i in indices:
        e = ds.entries[i]
        path = os.path.join(ds.image_dir, e["image_file"])
        if not os.path.isfile(path):
            raise FileNotFoundError(f"image {path} (data-meta index {i}) not found under data.image_dir")
        with Image.open(path) as im:
            im = im.convert("RGB")
            if e["type"].startswith("fixed-"):
                arr = np.array(center_crop_arr(im, int(e["image_h"])))
            else:
                size = (int(e["image_w"]), int(e["image_h"]))
                arr = np.array(im if im.size == size else im.resize(size, resample=Image.BICUBIC))
        out.append(to_unit(arr))
    return out


_ENCODERS: dict = {}


def repa_encoder(cfg, device) -> "callable":
    """The frozen REPA encoder named by loss.repa_encoder / loss.repa_kind / loss.radio_repo (models.nit.repa_encoders:
    an export file, a local RADIO checkpoint, or 'package.module:factory'), wrapped for models.nit.loss; built once
    per (encoder, device)."""
    from models.nit.loss import repa_image_encoder
    from models.nit.repa_encoders import build_feature_encoder
    lc = cfg.loss
    spec, kind, repo = str(lc.repa_encoder), str(lc.get("repa_kind", "auto")), lc.get("radio_repo", None)
    key = (spec, kind, repo, str(device))
    if key not in _ENCODERS:
        # building may initialise layers from the global RNG; a resumed run builds it at another step, so keep the
        # training draws (t, noise, label drop) independent of when this happens
        with torch.random.fork_rng(devices=[]):
            enc = build_feature_encoder(spec, kind, None if repo is None else str(repo), device)
        _ENCODERS[key] = repa_image_encoder(enc, patch=int(lc.repa_patch))
    return _ENCODERS[key]


# ------------------------------------------------------------------------------------------------------ loss
def family_loss(model: nn.Module, batch: dict, ctx: TrainContext) -> tuple[torch.Tensor, dict]:
    cfg = ctx.cfg
    lc = cfg.loss
    use_repa = repa_on(cfg)
    enc = repa_encoder(cfg, batch["x"].device) if use_repa else None
    return nit_loss(model, batch, label_drop=float(lc.label_drop), repa_coeff=float(lc.repa_coeff) if use_repa
                    else 0.0, repa_encoder=enc, P_mean=float(lc.P_mean), P_std=float(lc.P_std))


def param_groups(model: nn.Module, cfg) -> list[dict]:
    """Every trained parameter with train.weight_decay (the official AdamW decays all of them). Without REPA the
    projector is frozen here: it gets no gradient, and DDP insists that every trained parameter is used."""
    net = _net(model)
    if net.projector is not None and not repa_on(cfg):
        net.projector.requires_grad_(False)
    return [{"params": [p for p in net.parameters() if p.requires_grad],
             "weight_decay": float(cfg.train.weight_decay)}]


# -------------------------------------------------------------------------------------------------- sampling
@dataclass(frozen=True)
class NiTSampling:
    mode: str
    steps: int
    cfg_scale: float  # w of u + w·(c − u) (samplers.guidance): the official --cfg-scale as it is
    guidance_low: float
    guidance_high: float
    heun: bool
    height: int
    width: int
    downsample: int
    stream: object = None  # sample.rng=official: samplers.official_stream_nit.NiTOfficialStream

    @property
    def sequential(self) -> bool:
        return self.stream is not None


def sample_settings(cfg, model: nn.Module | None = None) -> NiTSampling:
    from samplers.flow import MODES, latent_size
    s = cfg.sample
    mode = str(s.mode)
    if mode not in MODES:
        raise ValueError(f"sample.mode (--mode) must be one of {', '.join(MODES)}, got {mode!r}")
    steps = int(s.steps)
    if steps < (2 if mode == "sde" else 1):
        raise ValueError(f"sample.steps (--num-steps) must be >= {2 if mode == 'sde' else 1} for --mode {mode}, "
                         f"got {steps}")
    low, high = float(s.guidance_low), float(s.guidance_high)
    for key, v in (("sample.guidance_low (--guidance-low)", low), ("sample.guidance_high (--guidance-high)", high)):
        if not 0.0 <= v <= 1.0:  # t runs from 1 (noise) to 0: a bound outside would be clipped without a word
            raise ValueError(f"{key} is a time t in [0, 1] (1 = noise), got {v}")
    if not low <= high:
        raise ValueError(f"--guidance-low {low} must not exceed --guidance-high {high}")
    kind = cfg.tokenizer.kind
    dec = decoder_class(kind)
    ds = downsample(cfg)
    heun = switch(s.heun, "sample.heun")
    if heun and mode != "ode":
        raise ValueError("--heun is a corrector of the ODE sampler; it has no effect with --mode sde")
    out = NiTSampling(mode, steps, float(s.cfg_scale), low, high, heun, int(s.height), int(s.width), int(ds),
                      official_stream(cfg))
    if model is not None:
        net = _net(model)
        latent_size(out.height, out.width, out.downsample, net.patch_size)
        want = cfg.tokenizer.get("channels") or getattr(dec, "latent_channels", None)  # channels: pixels only
        if want is not None and net.in_channels != want:
            raise ValueError(f"model.in_channels {net.in_channels} does not match tokenizer.kind {kind} "
                             f"({want} latent channels)")
    return out


def downsample(cfg) -> int:
    """Image pixels per latent pixel: sample.downsample, or the tokenizer's (which a given value must match)."""
    kind = cfg.tokenizer.kind
    dec = decoder_class(kind)
    ds = cfg.sample.downsample if cfg.sample.downsample is not None else getattr(dec, "downsample", None)
    if ds is None:
        known = {k: decoder_class(k).downsample for k in ("dcae", "pixels")}
        raise ValueError(f"sample.downsample is not set and tokenizer.kind {kind!r} has no known downsampling "
                         f"(known: {known})")
    if dec is not None and int(ds) != dec.downsample:  # images of another size than asked, FID on them
        raise ValueError(f"sample.downsample {ds} disagrees with tokenizer.kind {kind}, which decodes one latent "
                         f"pixel to {dec.downsample} x {dec.downsample} pixels; remove sample.downsample")
    if int(ds) < 1:
        raise ValueError(f"sample.downsample must be an integer >= 1, got {ds}")
    return int(ds)


def official_stream(cfg):
    """sample.rng: per_row (None: sample i from (seed, i)) | official (the official script's stream, one process)."""
    from samplers.rng import one_process, sample_rng
    if sample_rng(cfg) == "per_row":
        return None
    from core import dist
    one_process(dist.world_size(), "the official rank r seeds global_seed x world + r")
    from samplers.official_stream_nit import NiTOfficialStream
    return NiTOfficialStream(int(cfg.seed), int(cfg.eval.batch_size))


def parse_size(value, key: str = "sample.sizes") -> tuple[int, int]:
    """'32x48', [32, 48] or (32, 48) -> (32, 48) = (height, width)."""
    if isinstance(value, str):
        parts = value.lower().split("x")
    else:
        parts = list(value)
    try:
        h, w = (int(v) for v in parts)
    except (TypeError, ValueError):
        raise ValueError(f"{key}: a size is HxW (e.g. 32x48) or [H, W], got {value!r}") from None
    if h < 1 or w < 1:
        raise ValueError(f"{key}: sizes must be positive, got {value!r}")
    return h, w


def sample_sizes(cfg) -> list[tuple[int, int]]:
    """The image sizes an eval samples: eval.size when set, else sample.sizes (several sizes packed into one
    sampling batch, each with its own FID), else sample.height x sample.width; each one a whole number of patches
    of latent pixels."""
    from samplers.flow import latent_size
    if cfg.eval.size is not None:
        sizes = [parse_size(cfg.eval.size, "eval.size")]
    elif cfg.sample.get("sizes", None):
        sizes = [parse_size(v) for v in cfg.sample.sizes]
    else:
        sizes = [(int(cfg.sample.height), int(cfg.sample.width))]
    ds, p = downsample(cfg), _patch_size(cfg)
    for h, w in sizes:
        latent_size(h, w, ds, p)
    return sizes


def _size_arg(settings: NiTSampling, size):
    if size is None:
        return (settings.height, settings.width)
    if len(size) == 2 and all(isinstance(v, int) for v in size):
        return (int(size[0]), int(size[1]))
    return [parse_size(v, "size") for v in size]


@torch.no_grad()
def family_sample(model: nn.Module, labels: torch.Tensor, generators, settings: NiTSampling, size=None):
    """Scaled latents Float32 (B, C, H/downsample, W/downsample) at image size `size` (H, W), default the
    settings' height x width; row i from generators[i] alone. `size` a list of one (H, W) per row: the rows are
    sampled in one packed batch and a list of per-row latents (C, H/downsample, W/downsample) comes back."""
    from models.nit.sampling import sample_latents
    if settings.stream is not None:
        raise ValueError("these settings replay the official sampler's stream (sample.rng=official): they go to "
                         "family_replay, not to the per-row sample")
    return sample_latents(model, labels, generators, settings, _size_arg(settings, size))


@torch.no_grad()
def family_replay(model: nn.Module, labels: torch.Tensor, settings: NiTSampling, size=None):
    """(latents, labels) of the official stream's next batch (sample.rng=official): the script draws the noise, then
    the labels, from one generator, so the given labels only say how many rows."""
    from models.nit.sampling import sample_official
    return sample_official(model, labels.shape[0], settings, _size_arg(settings, size))


@torch.no_grad()
def family_edit(model: nn.Module, known, keep, labels: torch.Tensor, generators, settings: NiTSampling, size=None,
                tokenizer=None):
    """Inpainting / outpainting: `sample` where part of the latents is given (samplers.flow, editing).

    `known`: scaled latents Float (B, C, h, w) of one canvas, the layout `sample` returns for one size: the
    tokenizer's scaled encoding (DC-AE: encode x 0.41407) of the input images placed on the output canvas, h = H /
    downsample, w = W / downsample (any values where not kept). `keep`: Bool (B, h, w), True = keep known there
    exactly, False = sample. Outpainting is a canvas larger than the image: e.g. a 256x256 image on a 256x512 canvas
    is known (B, 32, 8, 16) (DC-AE f32), keep True on [:, :, :8] for the image on the left. `size` (H, W): the canvas
    in pixels, None = known's (h·downsample, w·downsample); a given size must agree with known. Several canvas sizes
    in one batch: `known` a list of (C, h, w) per row, `keep` a list of (h, w), `size` a list of one (H, W) per row
    (or None), and a list of per-row latents comes back.

    Returns the scaled latents of `sample`: row i from generators[i] alone; nothing kept = `sample` with the same
    generators, bit for bit; everything kept = known itself."""
    from models.nit.sampling import sample_latents
    if settings.stream is not None:
        raise ValueError("editing draws each row's noise from its own generator: sample.rng must be per_row, not "
                         "official")
    net = _net(model)
    per_row = not torch.is_tensor(known)
    rows_known = list(known) if per_row else list(known.unbind(0)) if known.dim() == 4 else None
    if rows_known is None:
        raise ValueError(f"known must be latents (B, C, h, w) or a list of (C, h, w), got shape {list(known.shape)}")
    rows_keep = list(keep) if not torch.is_tensor(keep) else list(keep.unbind(0)) if keep.dim() == 3 else None
    if rows_keep is None or len(rows_keep) != len(rows_known) or len(rows_known) != labels.shape[0]:
        raise ValueError(f"need one known latent, one keep mask (h, w) and one label per row: {len(rows_known)} "
                         f"latents, {'?' if rows_keep is None else len(rows_keep)} masks, {labels.shape[0]} labels")
    sizes = []
    for i, (x, k) in enumerate(zip(rows_known, rows_keep)):
        if x.dim() != 3 or x.shape[0] != net.in_channels:
            raise ValueError(f"known row {i} has shape {list(x.shape)}; expected ({net.in_channels}, h, w)")
        if k.dtype != torch.bool or tuple(k.shape) != tuple(x.shape[1:]):
            raise ValueError(f"keep row {i} must be Bool {list(x.shape[1:])} (known's grid), got {k.dtype} "
                             f"{list(k.shape)}")
        sizes.append((int(x.shape[1]) * settings.downsample, int(x.shape[2]) * settings.downsample))
    if size is not None:
        want = [parse_size(v, "size") for v in size] if per_row else [(int(size[0]), int(size[1]))] * len(sizes)
        if want != sizes:
            raise ValueError(f"size {size} disagrees with the known latents, which cover {sizes} pixels "
                             f"(downsample {settings.downsample})")
    if all(bool(k.all()) for k in rows_keep):
        return [x.clone() for x in rows_known] if per_row else known.clone()
    device = next(net.parameters()).device
    out = sample_latents(model, labels, generators, settings, sizes if per_row else sizes[0],
                         known=[x.to(device) for x in rows_known], keep=[k.to(device) for k in rows_keep])
    return out


def num_classes(model: nn.Module, cfg) -> int:
    return int(_net(model).num_classes)


# --------------------------------------------------------------------------------------------------- weights
ACCELERATE_FILES = {True: "model.safetensors", False: "model_1.safetensors"}


def weights_file(path: str, use_ema: bool = True) -> str:
    """An accelerate `save_state` folder of the official trainer -> its EMA (`model.safetensors`, the first model
    it prepared) or online (`model_1.safetensors`) weights file; a file path is returned as is."""
    if not os.path.isdir(path):
        return path
    f = os.path.join(path, ACCELERATE_FILES[bool(use_ema)])
    if not os.path.isfile(f):
        which = "EMA weights, eval.use_ema=true" if use_ema else "online weights, eval.use_ema=false"
        raise FileNotFoundError(f"{f} not found ({which}): a folder given as weights is read as an accelerate "
                                f"save_state folder, which holds model.safetensors (EMA) and model_1.safetensors "
                                f"(online)")
    return f


# ------------------------------------------------------------------------------------------- official flags
# projects/sample/sample_c2i_ddp.py of the NiT README -> config keys
OFFICIAL_FLAGS = {
    "--ckpt": ("eval.pretrained_path", 1),
    "--sample-dir": ("output_dir", 1),
    "--height": ("sample.height", 1),
    "--width": ("sample.width", 1),
    "--per-proc-batch-size": ("eval.batch_size", 1),
    "--mode": ("sample.mode", 1),
    "--num-steps": ("sample.steps", 1),
    "--cfg-scale": ("sample.cfg_scale", 1),
    "--guidance-low": ("sample.guidance_low", 1),
    "--guidance-high": ("sample.guidance_high", 1),
    "--heun": ("sample.heun", 0),
    "--slice_vae": ("eval.decode_batch", 0, 1),  # DC-AE decodes one image at a time (memory only, same numbers)
    "--num-fid-samples": ("eval.n", 1),
    "--global-seed": ("seed", 1),
}

# Without --mode every sampler flag means eval: the README's commands run sample_c2i_ddp.py, and training has no
# official flags here.
MODE_FLAGS = {flag: "eval" for flag in OFFICIAL_FLAGS}

REF_STATS_HINT = ("NiT's README scores with ADM's reference batch of the sampled size, VIRTUAL_imagenet256_labeled.npz "
                  "(256) or VIRTUAL_imagenet512.npz (512), from https://openaipublic.blob.core.windows.net/diffusion/"
                  "jul-2021/ref_batches/imagenet/256/ (or .../512/), given as --reference_image_path or eval.ref_stats")


def sample_folder(cfg, size, weights) -> str:
    """The folder sample_c2i_ddp.py names by its settings inside --sample-dir:
    `<train iter>-<H>x<W>-<mode>-<steps>-cfg-<w>-low-<low>-high-<high>`, the first part being the last '-' piece of
    the checkpoint's parent folder (`checkpoints` for checkpoints/model_1000K.safetensors); our own latest
    checkpoint contributes its file name (step_XXXXXXX). `-heun` is added for the ODE corrector, which the
    official name leaves out (a run with it would otherwise share the folder of one without)."""
    s = cfg.sample
    h, w = (int(size[0]), int(size[1])) if size is not None else (int(s.height), int(s.width))
    ckpt = cfg.eval.pretrained_path
    if ckpt is None:
        it = Path(str(weights)).stem
    else:
        parts = str(ckpt).split("/")
        it = parts[-2].split("-")[-1] if len(parts) > 1 else ""
    name = (f"{it}-{h}x{w}-{s.mode}-{int(s.steps)}-cfg-{float(s.cfg_scale)}-low-{float(s.guidance_low)}-high-"
            f"{float(s.guidance_high)}")
    return name + ("-heun" if switch(s.heun, "sample.heun") else "")


FAMILY = Family(
    name="nit",
    flavours=FLAVOURS,
    config="configs/family/nit.yaml",
    dataset=pack_dataset,
    batches=pack_batches,
    loss=family_loss,
    official_flags=OFFICIAL_FLAGS,
    mode_flags=MODE_FLAGS,
    training=Training(to_device=to_device, batch_rows=batch_rows, param_groups=param_groups),
    sampling=Sampling(
        sample=family_sample,
        settings=sample_settings,
        replays=lambda settings: settings.sequential,
        replay=family_replay,
        sizes=sample_sizes,
        num_classes=num_classes,
        weights_file=weights_file,
        sample_folder=sample_folder,
        ref_stats_hint=REF_STATS_HINT,
        edit=family_edit,
    ),
)
