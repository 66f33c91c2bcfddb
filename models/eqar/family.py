"""Family `eqar`: the equivariant column AR generator (network in models/eqar/model.py, sampler in samplers/column_ar.py
stepping the model functions of models/eqar/condition.py).

Training data, as the release makes it: images -> column tokenizer `sample()` (posterior mean plus per-image noise)
-> x vae_norm, encoded on the fly inside `loss` with the tokenizer of `cfg.tokenizer` (data.kind imagefolder |
fmnist | synthetic), or noise added to cached posterior means (data.kind latents, scripts/eqar_cache_latents.py).
`sample` returns what the column tokenizer decodes: unscaled latents (B, L, C) = sampler output / vae_norm.

Official commands: `train_generator.py` / `eval_generator.py` flags of the README are aliases of config keys
(OFFICIAL_FLAGS). Per-GPU `--batch_size`, `--blr`, `--epochs` and `--warmup_epochs` are turned into the engine's
global batch, LR (blr x batch / 256) and step counts while the config loads (`official_schedule`).
`--resume DIR --ckpt FILE` name the weights for eval (eval.pretrained_path = DIR/FILE). An official
`{'model', 'model_ema', ..., 'args'}` file has its `args` compared with the recipe before anything is loaded:
the model builder reads them (model.args_from, = eval.pretrained_path), sample_settings checks vae_norm.
"""
from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass

import torch
from omegaconf import OmegaConf
from torch import nn

from core import dist
from core.released import read_released
from datasets.sampling import drawing_row_batches
from models.eqar import model as eqar
from models.eqar.checks import check_config, check_model_kwargs, check_switch, check_value
from models.family import Family, Sampling, Training
from models.eqar.condition import sample as column_ar_sample
from samplers.column_ar import ColumnARSettings, OfficialColumnStream
from samplers.rng import one_process, sample_rng


# the release's checkpoints pickle their argparse.Namespace: allow exactly that class in weights-only loads
torch.serialization.add_safe_globals([argparse.Namespace])


def _join(directory, name):
    """eval.pretrained_path from the official --resume DIR --ckpt FILE (None unless both are given)."""
    if directory is None or name is None:
        return None
    return os.path.join(str(directory), str(name))


def _tokenizer_ckpt_from_config(config_path):
    """tokenizer.ckpt from the official tokenizer YAML (--config_path): its model.params.ckpt_path (a path relative
    to the working directory, as the release reads it). A given YAML that cannot say it is an error, never a silent
    fall-back to the default tokenizer file."""
    if config_path is None:
        return None
    where = (f"--config_path {config_path} (tokenizer.config_path): the official tokenizer YAML, e.g. "
             f"configs/second_stage/tokenizer_config.yaml")
    if not os.path.isfile(str(config_path)):
        raise ValueError(f"{where}, is not a file")
    import yaml
    try:
        with open(str(config_path)) as f:
            node = yaml.safe_load(f)
    except (OSError, yaml.YAMLError) as e:
        raise ValueError(f"{where}, cannot be read ({type(e).__name__})") from None
    params = ((node or {}).get("model") or {}).get("params") if isinstance(node, dict) else None
    ckpt = params.get("ckpt_path") if isinstance(params, dict) else None
    if not ckpt:
        raise ValueError(f"{where}, has no model.params.ckpt_path (the tokenizer checkpoint); set it there or give "
                         f"tokenizer.ckpt=<tokenizer checkpoint>")
    return str(ckpt)


for _name, _fn in (("eqar_join", _join), ("eqar_tokenizer_ckpt", _tokenizer_ckpt_from_config)):
    OmegaConf.register_resolver(_name, _fn, replace=True, annotation_validation="off")


# ------------------------------------------------------------------------------------------ official args check
# release argument -> model constructor argument of the same meaning
ARGS_TO_MODEL = ("vae_embed_dim", "buffer_size", "cond_length", "diffusion_batch_mul", "diffloss_w", "diffloss_d",
                 "class_num", "label_drop_prob")
FLAVOUR_OF = {"small_model": "small", "base_model": "base", "large_model": "large", "huge_model": "huge"}


def official_args(path) -> dict | None:
    """The `args` namespace of an official {'model', 'model_ema', ..., 'args'} file as a dict (None otherwise).
    Memory-mapped: reading the args of a 2.6 GB file costs nothing."""
    if path is None or not os.path.isfile(str(path)):
        return None
    try:
        obj = read_released(path, "generator weights")
    except Exception:  # not ours to judge here: the engine's loader reports unreadable files in one line
        return None
    args = obj.get("args") if isinstance(obj, dict) else None
    if isinstance(args, argparse.Namespace):
        return vars(args)
    return dict(args) if isinstance(args, dict) else None


def check_official_args(path, flavour: str, kwargs: dict) -> None:
    args = official_args(path)
    if args is None:
        return
    want = FLAVOUR_OF.get(str(args.get("model")), args.get("model"))
    if "model" in args and FLAVOUR_OF.get(flavour, flavour) != want:
        raise ValueError(f"{path} was trained with --model {args['model']} but the recipe builds flavour "
                         f"'{flavour}' (model.flavour / --model)")
    for key in ARGS_TO_MODEL:
        if key in args and key in kwargs and not _same(args[key], kwargs[key]):
            raise ValueError(f"{path} was trained with --{key} {args[key]} but the recipe sets model.{key}="
                             f"{kwargs[key]} (--{key}); pass --{key} {args[key]}")


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return math.isclose(float(a), float(b), rel_tol=1e-6)
    return a == b


def _builder(name: str, build):
    def make(args_from=None, grad_checkpointing=False, **kw):
        kw = check_model_kwargs(kw)
        gc = check_switch("model.grad_checkpointing", grad_checkpointing)  # the bare official flag sets True
        full = {**build.defaults, **kw}
        check_official_args(args_from, name, full)
        return build(grad_checkpointing=gc, **kw)
    make.defaults = dict(build.defaults)
    return make


FLAVOURS = {name: _builder(name, b) for name, b in eqar.FLAVOURS.items()}
FLAVOURS.update({off: _builder(off, eqar.FLAVOURS[ours]) for off, ours in FLAVOUR_OF.items()})  # --model names


# --------------------------------------------------------------------------------------------------------- data
DATA_KINDS = ("imagefolder", "fmnist", "latents", "synthetic")


def crop_size(cfg) -> tuple[int, int]:
    return int(cfg.data.image_size), int(cfg.data.token_num) * int(cfg.data.column_width)


class LatentFile:
    """Cached posterior means {'mean': (N, [V,] L, C), 'label': (N,)}; V views (e.g. original and flip) are drawn
    one per row at random. Noise (and vae_norm) is applied in the loss, as for on-the-fly encoding."""

    def __init__(self, path: str):
        from core.loading import load_file
        obj = load_file(path, "latent cache")
        if not isinstance(obj, dict) or "mean" not in obj or "label" not in obj:
            raise ValueError(f"{path}: expected {{'mean': (N, [V,] L, C), 'label': (N,)}} "
                             f"(written by scripts/eqar_cache_latents.py)")
        self.mean, self.label = obj["mean"], obj["label"].long()
        if self.mean.dim() == 3:
            self.mean = self.mean[:, None]
        self.config = obj.get("tokenizer")

    def __len__(self):
        return len(self.label)

    def get_batch(self, idx: torch.Tensor, gen: torch.Generator) -> dict:
        view = torch.randint(self.mean.shape[1], (len(idx),), generator=gen)
        return {"mean": self.mean[idx, view].float(), "label": self.label[idx]}


_COUNTED: dict = {}  # the training set official_schedule counted, kept for the trainer's dataset call


def _data_key(cfg, split: str) -> tuple:
    d = cfg.data
    return (split, str(d.kind), str(d.path), crop_size(cfg), bool(d.hflip), str(OmegaConf.to_container(cfg.model)),
            int(d.synthetic_n))


def eqar_dataset(cfg, split: str = "train"):
    """The data set of data.kind; the one `official_schedule` already built for its size (an image folder listed,
    Fashion-MNIST read) is handed over instead of being built again."""
    ds = _COUNTED.pop(_data_key(cfg, split), None)
    return ds if ds is not None else _build_dataset(cfg, split)


def _build_dataset(cfg, split: str):
    d = cfg.data
    h, w = crop_size(cfg)
    if d.kind not in DATA_KINDS:
        raise ValueError(f"family 'eqar': data.kind must be one of {', '.join(DATA_KINDS)}, got '{d.kind}'")
    if d.kind == "imagefolder":
        if not d.path:
            raise ValueError("data.path (--data_path) is empty: give an ImageNet-layout folder <class>/<images>")
        from datasets.column_images import ImageFolderColumns
        ds = ImageFolderColumns(str(d.path), h, w, bool(d.hflip))
    elif d.kind == "fmnist":
        from datasets.column_images import FashionMNISTColumns
        ds = FashionMNISTColumns(d.path, split, h, w, bool(d.hflip))
    elif d.kind == "latents":
        if not d.path:
            raise ValueError("data.path is empty: give a latent cache written by scripts/eqar_cache_latents.py")
        ds = LatentFile(str(d.path))
        dim = cfg.model.get("vae_embed_dim") or FLAVOURS[str(cfg.model.flavour)].defaults.get("vae_embed_dim")
        if ds.mean.dim() != 4 or len(ds.label) != ds.mean.shape[0] or int(ds.mean.shape[-1]) != int(dim):
            raise ValueError(f"{d.path}: latents {tuple(ds.mean.shape)} and {len(ds.label)} labels do not fit "
                             f"model.vae_embed_dim (--vae_embed_dim) {dim}: expected 'mean' (N, [V,] L, {dim}) and N "
                             f"labels")
    else:
        from datasets.column_images import SyntheticColumns
        ds = SyntheticColumns(int(d.synthetic_n), int(cfg.model.get("class_num", 10) or 10), h, w)
    return ds


def official_schedule(cfg, mode: str) -> None:
    """Family.derive_config: the release's per-GPU batch, base LR and epoch counts -> the engine's global batch, LR
    and steps, while the config loads (training only): the printed and checkpointed config is the one that runs, and
    the engine's range checks see the values made here. The processes are torchrun's WORLD_SIZE; the epochs need
    the training set's size (a folder listing, the IDX header set, or the shapes of a memory-mapped latent cache)."""
    if mode != "pretrain":
        return
    for key in ("train.batch_size_per_rank", "train.blr", "train.epochs", "train.warmup_epochs"):
        v = check_value(key, OmegaConf.select(cfg, key))  # in range before any arithmetic: the error names the flag
        if v is not None:
            OmegaConf.update(cfg, key, v)
    t = cfg.train
    n = training_set_size(cfg) if t.epochs is not None or t.warmup_epochs is not None else 0
    apply_official_schedule(cfg, n, int(os.environ.get("WORLD_SIZE", "1")))


def training_set_size(cfg) -> int:
    d = cfg.data
    if d.kind == "latents" and d.path and os.path.isfile(str(d.path)):
        try:  # the labels' length from a memory-mapped file: the cache itself is not read here
            obj = torch.load(str(d.path), map_location="cpu", weights_only=True, mmap=True)
            return len(obj["label"])
        except Exception:  # not a readable cache: the data set names the file and what it should hold
            pass
    ds = eqar_dataset(cfg, "train")
    _COUNTED.clear()
    _COUNTED[_data_key(cfg, "train")] = ds
    return len(ds)


def apply_official_schedule(cfg, n: int, world: int) -> None:
    """The arithmetic of `official_schedule` for a training set of n images on `world` processes."""
    t = cfg.train
    if t.batch_size_per_rank is not None:
        t.batch_size = int(t.batch_size_per_rank) * world * int(t.grad_accum)
    if t.blr is not None:
        t.lr = float(t.blr) * int(t.batch_size) / 256
    per_epoch = max(1, n // int(t.batch_size))
    if t.epochs is not None:
        t.steps = int(t.epochs) * per_epoch
    if t.warmup_epochs is not None:
        t.warmup_steps = int(round(float(t.warmup_epochs) * per_epoch))


# ---------------------------------------------------------------------------------------------------- tokenizer
_TOKENIZERS: dict = {}


def training_tokenizer(cfg, device):
    """The frozen tokenizer of cfg.tokenizer on `device`, built once per process."""
    t = cfg.tokenizer
    key = (str(t.kind), str(t.ckpt), str(device))
    if key not in _TOKENIZERS:
        from tokenizer import build_tokenizer
        if t.kind != "column":
            raise ValueError(f"family 'eqar' trains on column-tokenizer latents: tokenizer.kind must be 'column', "
                             f"got {t.kind!r}")
        with torch.random.fork_rng(devices=[]):  # building draws init weights: keep the step's RNG stream intact
            tok = build_tokenizer("column", ckpt=t.ckpt).to(device)
        h, w = int(cfg.data.image_size), int(cfg.data.column_width)
        if tok.height != h or tok.downsample != w:
            raise ValueError(f"tokenizer {t.ckpt} makes one token per {tok.downsample} px of {tok.height}-px-high "
                             f"images, but data.image_size={h}, data.column_width={w}")
        _TOKENIZERS.clear()
        _TOKENIZERS[key] = tok
    return _TOKENIZERS[key]


def training_latents(batch: dict, cfg) -> torch.Tensor:
    """(B, L, C) generator targets: tokenizer sample() x vae_norm (draws from the engine-seeded global RNG)."""
    from tokenizer.column import POSTERIOR_STD, gaussian_sample
    vae_norm = float(cfg.tokenizer.vae_norm)
    if "mean" in batch:
        mean = batch["mean"]
    else:
        images = batch["image"]
        tok = training_tokenizer(cfg, images.device)
        with torch.no_grad(), torch.autocast(images.device.type, enabled=False):
            mean = tok.encode(images.float())
    return gaussian_sample(mean.float(), POSTERIOR_STD) * vae_norm


def eqar_family_loss(model: nn.Module, batch: dict, ctx) -> tuple[torch.Tensor, dict]:
    latents = training_latents(batch, ctx.cfg)
    return eqar.eqar_loss(model, {"latent": latents, "label": batch["label"]}, ctx)


# ------------------------------------------------------------------------------------------------------ sampling
@dataclass(frozen=True)
class EqarSampling:
    """`stream` (sample.rng: official) replays the release's single-process eval: its noise stream and its labels
    (image i of eval.n gets class i // (eval.n / classes)), so calls must come in batch order on one process."""
    sampler: ColumnARSettings
    num_tokens: int
    column_width: int
    vae_norm: float
    stream: OfficialColumnStream | None = None
    hflip: bool = False  # data.hflip: the generator saw mirrored images in training (edit: extending to the left)

    @property
    def sequential(self) -> bool:
        return self.stream is not None


def eqar_sample_settings(cfg, model) -> EqarSampling:
    s = cfg.sample
    if float(s.temperature) != 1.0:
        raise ValueError(f"sample.temperature={s.temperature} (--temperature): the release's flow sampler ignores "
                         f"the temperature (its ODE is deterministic given the noise); leave it at 1.0")
    fast = check_switch("sample.fast_path", s.fast_path)
    settings = ColumnARSettings(num_steps=int(s.num_sampling_steps), cfg=float(s.cfg),
                                cfg_schedule=str(s.cfg_schedule), use_cache=bool(s.use_cache),
                                fast_path=fast, batched_head=check_switch("sample.batched_head", s.batched_head))
    settings.check()
    n = int(s.num_iter) if s.num_iter is not None else int(cfg.data.token_num)
    if n < 1:
        raise ValueError(f"sample.num_iter (--num_iter) must be >= 1, got {n}")
    args = official_args(cfg.eval.pretrained_path)
    if args is not None and "vae_norm" in args and not _same(args["vae_norm"], cfg.tokenizer.vae_norm):
        raise ValueError(f"{cfg.eval.pretrained_path} was trained with --vae_norm {args['vae_norm']} but the recipe "
                         f"sets tokenizer.vae_norm={cfg.tokenizer.vae_norm} (--vae_norm)")
    stream = None
    if sample_rng(cfg) == "official":
        one_process(dist.world_size(), "the release seeds rank r with seed + r")
        stream = OfficialColumnStream(int(cfg.seed), int(cfg.eval.batch_size), int(cfg.eval.n),
                                      int(getattr(model, "module", model).class_num))
    return EqarSampling(settings, n, int(cfg.data.column_width), float(cfg.tokenizer.vae_norm), stream,
                        check_switch("data.hflip", cfg.data.hflip))


def _tokens(settings: EqarSampling, size) -> int:
    """Tokens of one sample: settings.num_tokens, or W / column_width for size=(H, W)."""
    if size is None:
        return settings.num_tokens
    w = int(size[1])
    if w % settings.column_width or w < settings.column_width:
        raise ValueError(f"image width {w} is not a positive multiple of the column width {settings.column_width}")
    return w // settings.column_width


def eqar_sample(model: nn.Module, labels: torch.Tensor, generators, settings: EqarSampling, size=None):
    """Unscaled latents (B, L, C) for the column tokenizer, row i from generators[i]; size=(H, W) asks for
    W / column_width tokens."""
    if settings.stream is not None:
        raise ValueError("these settings replay the release's stream (sample.rng=official): they go to eqar_replay, "
                         "not to the per-row sample")
    out = column_ar_sample(model, labels, generators, settings.sampler, num_tokens=_tokens(settings, size))
    return out / settings.vae_norm


def eqar_replay(model: nn.Module, labels: torch.Tensor, settings: EqarSampling, size=None):
    """(latents, the release's labels of this batch) from its stream (sample.rng=official)."""
    n, stream = _tokens(settings, size), settings.stream
    labels = stream.labels(labels.shape[0], labels.device)
    out = column_ar_sample(model, labels, None, settings.sampler, num_tokens=n, stream=stream)
    return out / settings.vae_norm, labels


def _kept_run(row: torch.Tensor) -> tuple[str, int]:
    """A row of keep (L,) -> ('right', k) when it is True on the first k columns only, ('left', k) when on the last
    k only, ('', 0) otherwise; all True counts as ('right', L)."""
    n, k = row.shape[0], int(row.sum())
    if bool(row[:k].all()):
        return "right", k
    if bool(row[n - k:].all()):
        return "left", k
    return "", 0


@torch.no_grad()
def _mirror(tokenizer, latents: torch.Tensor) -> torch.Tensor:
    """Unscaled column latents (B, L, C) -> those of the horizontally flipped images (decode, flip, encode)."""
    images = tokenizer.decode(latents.to(tokenizer.device)).flip(-1)
    return tokenizer.encode(images).to(device=latents.device, dtype=latents.dtype)


@torch.no_grad()
def eqar_edit(model: nn.Module, known: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor, generators,
              settings: EqarSampling, size=None, tokenizer=None) -> torch.Tensor:
    """Extend given images to the right (or, mirrored, to the left) by sampling further columns.

    `known`: unscaled column latents (B, L, C), the layout `sample` returns (the column tokenizer's `encode` of
    the images: one C-vector per column_width pixels of width, left to right), L = the output canvas's tokens
    (any values where not kept). `keep`: Bool (B, L), per row either True on a PREFIX of columns (the first k:
    the image sits on the left of the canvas and is extended to the right) or True on a SUFFIX (the last k: the
    image sits on the right and is extended to the left); any other pattern is a ValueError. `size` (H, W): W /
    column_width must be L (None: L). Returns unscaled latents (B, L, C) with known's values exactly where kept.

    Right: the kept columns, x vae_norm, are fed to the model as if it had sampled them (teacher-forced into its KV
    cache) and the rest is sampled as `sample` does (samplers.column_ar.extend): nothing kept = `sample` with the
    same generators, bit for bit; row r is a function of generators[r]; L may be many times the training width
    (positions continue, the cache keeps its window).
    Left: the mirrored procedure, valid only for a model trained on mirrored images (settings.hflip = data.hflip,
    as the release trains): the image is decoded, flipped, encoded, extended to the right, and the result decoded,
    flipped back and encoded. The column tokenizer is not mirror-symmetric in latent space, so this needs
    `tokenizer` (the column tokenizer that made `known`), and the kept image must have >= 2 columns."""
    from models.eqar.condition import extend
    if settings.stream is not None:
        raise ValueError("editing draws each row's noise from its own generator: sample.rng must be per_row, not "
                         "official")
    if not torch.is_tensor(known) or known.dim() != 3:
        raise ValueError(f"known must be column latents (B, L, C), got {getattr(known, 'shape', type(known))}")
    b, n, c = known.shape
    if not torch.is_tensor(keep) or keep.dtype != torch.bool or tuple(keep.shape) != (b, n):
        raise ValueError(f"keep must be Bool (B, L) = {[b, n]} (known's shape without channels), got "
                         f"{getattr(keep, 'dtype', type(keep))} {list(getattr(keep, 'shape', []))}")
    if labels.shape != (b,):
        raise ValueError(f"need one label per row: labels {list(labels.shape)} for {b} rows")
    if size is not None and int(size[1]) != n * settings.column_width:
        raise ValueError(f"size {tuple(size)} disagrees with known's {n} columns of {settings.column_width} pixels "
                         f"({n * settings.column_width} wide)")
    runs = [_kept_run(row) for row in keep.cpu()]
    for r, (side, _) in enumerate(runs):
        if not side:
            raise ValueError(f"keep row {r} is not a run of columns at one end: the column AR extends an image to "
                             f"the right (keep True on the first k columns) or to the left (True on the last k)")
    if bool(keep.all()):
        return known.clone()
    left = [r for r, (side, k) in enumerate(runs) if side == "left" and k < n]
    if left:
        if not settings.hflip:
            raise ValueError(f"keep row {left[0]} extends to the left, the mirror of extending to the right, but the "
                             f"model was not trained with horizontal flips (data.hflip=false)")
        if tokenizer is None:
            raise ValueError("extending to the left mirrors the image, which needs the column tokenizer: pass "
                             "tokenizer=")
        if any(runs[r][1] < 2 for r in left):
            raise ValueError("extending to the left re-encodes the kept image: it needs >= 2 columns")
    device = labels.device
    kept = torch.tensor([k for _, k in runs], device=device)
    prefix = known.to(device=device, dtype=torch.float32).clone()
    for r in left:
        k = runs[r][1]
        prefix[r, :k] = _mirror(tokenizer, prefix[r:r + 1, n - k:])[0]
    out = extend(model, labels, generators, settings.sampler, prefix * settings.vae_norm, kept, n)
    out = out / settings.vae_norm
    for r in left:
        out[r:r + 1] = _mirror(tokenizer, out[r:r + 1])
    return torch.where(keep.to(device)[..., None], known.to(device=device, dtype=out.dtype), out)


def eqar_param_groups(model, cfg):
    return eqar.param_groups(model, float(cfg.train.weight_decay))


OFFICIAL_FLAGS = {
    "--model": ("model.flavour", 1),
    "--vae_embed_dim": ("model.vae_embed_dim", 1),
    "--diffloss_d": ("model.diffloss_d", 1),
    "--diffloss_w": ("model.diffloss_w", 1),
    "--cond_length": ("model.cond_length", 1),
    "--class_num": ("model.class_num", 1),
    "--buffer_size": ("model.buffer_size", 1),
    "--diffusion_batch_mul": ("model.diffusion_batch_mul", 1),
    "--label_drop_prob": ("model.label_drop_prob", 1),
    "--grad_checkpointing": ("model.grad_checkpointing", 0),
    "--token_num": ("data.token_num", 1),
    "--data_path": ("data.path", 1),
    "--img_size": ("data.image_size", 1),
    "--vae_norm": ("tokenizer.vae_norm", 1),
    "--config_path": ("tokenizer.config_path", 1),
    "--num_iter": ("sample.num_iter", 1),
    "--num_sampling_steps": ("sample.num_sampling_steps", 1),
    "--cfg": ("sample.cfg", 1),
    "--cfg_schedule": ("sample.cfg_schedule", 1),
    "--temperature": ("sample.temperature", 1),
    "--epochs": ("train.epochs", 1),
    "--warmup_epochs": ("train.warmup_epochs", 1),
    "--batch_size": ("train.batch_size_per_rank", 1),
    "--blr": ("train.blr", 1),
    "--weight_decay": ("train.weight_decay", 1),
    "--grad_clip": ("train.grad_clip", 1),
    "--float32": ("train.precision", 0, "fp32"),  # the release's switch off mixed precision
    "--eval_bsz": ("eval.batch_size", 1),
    "--num_images": ("eval.n", 1),
    "--resume": ("eval.resume", 1),
    "--ckpt": ("eval.ckpt", 1),
    "--metrics": ("eval.metrics", 0, ["fid", "is"]),  # the release's switch: FID and IS (torch-fidelity) of the PNGs
}

# Without --mode, flags that only eval_generator.py has or uses select eval, flags that only train_generator.py has
# select pretrain (--resume, --ckpt, --output_dir, the model flags: both scripts); both kinds at once: an error.
MODE_FLAGS = {**{f: "eval" for f in ("--eval_bsz", "--num_images", "--cfg", "--metrics")},
              **{f: "pretrain" for f in ("--data_path", "--epochs", "--warmup_epochs", "--blr", "--batch_size",
                                         "--grad_clip")}}

REF_STATS_HINT = ("the equivariant README's --metrics compares with ADM's ImageNet-256 statistics "
                  "fid_stats/adm_in256_stats.npz (as in MAR), given as eval.ref_stats (the recipes: "
                  "assets/fid_stats/adm_in256_stats.npz) or --reference_image_path")


def sample_folder(cfg, size, weights) -> str:
    """The folder eval_generator.py names by its settings inside --output_dir:
    `ariter<tokens>-diffsteps<steps>-temp<temperature>-<--ckpt>-<schedule>cfg<cfg>-image<num_images>` and `_ema`
    (it samples with the EMA weights); <--ckpt> is our checkpoint's file name when --ckpt is not given."""
    s = cfg.sample
    if size is None and cfg.eval.size is not None:
        size = cfg.eval.size
    tokens = int(size[1]) // int(cfg.data.column_width) if size is not None else \
        int(s.num_iter) if s.num_iter is not None else int(cfg.data.token_num)
    ckpt = cfg.eval.ckpt if cfg.eval.ckpt is not None else os.path.basename(str(weights))
    name = (f"ariter{tokens}-diffsteps{int(s.num_sampling_steps)}-temp{float(s.temperature)}-{ckpt}-"
            f"{s.cfg_schedule}cfg{float(s.cfg)}-image{int(cfg.eval.n)}")
    return name + ("_ema" if cfg.eval.use_ema else "")


def compile_targets(model: nn.Module) -> list:
    """What the sampler calls per token (sample.compile). Fast path: the per-token step (kv_cache.token_step, all
    blocks with the window's keys) and the flow head's whole Euler loop (head_loop.integrate); module path
    (sample.fast_path=false): the flow head (num_sampling_steps times) and the transformer's step, block by block
    with the KV cache, or the teacher-forced features without it. Only what a run calls gets compiled."""
    net = getattr(model, "module", model)
    return [("token_step", net, "fused_step"), ("flow_loop", net, "fused_flow"),
            ("flow_head", net.diffloss.net, "forward"), ("condition", net, "features"),
            *((f"condition.block{i}", blk, "token_step") for i, blk in enumerate(net.encoder_blocks))]


FAMILY = Family(
    name="eqar",
    flavours=FLAVOURS,
    config="configs/family/eqar.yaml",
    dataset=eqar_dataset,
    batches=drawing_row_batches,
    loss=eqar_family_loss,
    official_flags=OFFICIAL_FLAGS,
    mode_flags=MODE_FLAGS,
    check_config=check_config,
    derive_config=official_schedule,
    training=Training(param_groups=eqar_param_groups),
    sampling=Sampling(
        sample=eqar_sample,
        settings=eqar_sample_settings,
        replays=lambda settings: settings.sequential,
        replay=eqar_replay,
        num_classes=lambda model, cfg: int(getattr(model, "module", model).class_num),
        sample_folder=sample_folder,
        ref_stats_hint=REF_STATS_HINT,
        edit=eqar_edit,
        compile_targets=compile_targets,
    ),
)
