"""Value checks of family `eqar` (models/eqar/family.py) that read no weights, run before anything large loads.

Its official flags arrive as config keys the engine cannot range-check (model.* are constructor arguments, the
schedule keys default to null): a value out of range either failed late with a message naming no flag or, worse,
was used (`--blr -1` trained with a negative LR, `--epochs 0` ended "done" without a checkpoint). The tokenizer file
is checked against the data geometry (height, column width, token width) from its config or tensor shapes alone.
"""
from __future__ import annotations

import math
import os

from omegaconf import OmegaConf

from samplers.column_ar import SCHEDULES

# integer key -> its smallest value; model.* keys are checked where the model is built (with the flavour defaults)
INT_KEYS = {
    "model.vae_embed_dim": 1, "model.class_num": 1, "model.buffer_size": 1, "model.cond_length": 0,
    "model.diffusion_batch_mul": 1, "model.diffloss_d": 1, "model.diffloss_w": 1,
    "data.image_size": 1, "data.column_width": 1, "data.synthetic_n": 1,
    "data.token_num": 2, "sample.num_iter": 2, "sample.num_sampling_steps": 1,
    "train.batch_size_per_rank": 1, "train.epochs": 1,
}
WHY = {"data.token_num": " (the column tokenizer's reflect padding needs 2 columns)",
       "sample.num_iter": " (the column tokenizer decodes at least 2 columns)",
       "train.epochs": " (train.steps = epochs x the data set's images // the global batch)"}
# number key -> (test of a finite value, what is expected)
NUMBER_KEYS = {
    "train.blr": (lambda v: v >= 0, "a number >= 0 (lr = blr x global batch / 256)"),
    "train.warmup_epochs": (lambda v: v >= 0, "a number >= 0"),
    "tokenizer.vae_norm": (lambda v: v > 0, "a number > 0 (latents are scaled by it)"),
    "sample.cfg": (lambda v: v >= 0, "a number >= 0 (1: no guidance)"),
    "model.label_drop_prob": (lambda v: 0 <= v <= 1, "a number in [0, 1]"),
}


def flag_of(key: str) -> str:
    """' (--flag)' of an official flag that sets `key`, else ''."""
    from models import get_family  # the family's record (its module imports this one)
    flags = [f for f, (k, *_) in get_family("eqar").official_flags.items() if k == key]
    return f" ({flags[0]})" if flags else ""


def check_value(key: str, v):
    """The value of `key` if it is in range (integral floats become ints), else a ValueError naming key and flag."""
    if v is None:
        return None
    if key in INT_KEYS:
        lo = INT_KEYS[key]
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not float(v).is_integer() or v < lo:
            raise ValueError(f"{key}{flag_of(key)} must be an integer >= {lo}{WHY.get(key, '')}, got {v!r}")
        return int(v)
    test, what = NUMBER_KEYS[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not test(v):
        raise ValueError(f"{key}{flag_of(key)} must be {what}, got {v!r}")
    return v


def check_model_kwargs(kw: dict) -> dict:
    """The builder's arguments with their ranges checked (integral floats turned into ints)."""
    out = dict(kw)
    for k, v in kw.items():
        key = f"model.{k}"
        if key in INT_KEYS or key in NUMBER_KEYS:
            out[k] = check_value(key, v)
    return out


def check_switch(key: str, v) -> bool:
    if v not in (True, False):  # 0 and 1 included
        raise ValueError(f"{key}{flag_of(key)} must be true/false, got {v!r}")
    return bool(v)


def check_config(cfg, mode: str) -> None:
    for key in [*INT_KEYS, *NUMBER_KEYS]:
        if not key.startswith("model."):
            v = check_value(key, OmegaConf.select(cfg, key))
            if v is not None:
                OmegaConf.update(cfg, key, v)
    schedule = cfg.sample.cfg_schedule
    if schedule not in SCHEDULES:
        raise ValueError(f"sample.cfg_schedule (--cfg_schedule) must be one of {', '.join(SCHEDULES)}, got "
                         f"{schedule!r}")
    _check_weights_flags(cfg, mode)
    if mode == "eval" and cfg.eval.source == "samples" and cfg.eval.size is not None:
        check_eval_size(cfg)
    if str(cfg.tokenizer.kind) != "column":
        raise ValueError(f"family 'eqar' generates column-tokenizer latents: tokenizer.kind must be 'column', got "
                         f"{cfg.tokenizer.kind!r}")
    trains_on_images = mode != "pretrain" or cfg.data.kind != "latents" or int(cfg.train.sample_every) > 0
    if trains_on_images:
        check_tokenizer_file(cfg)


def _check_weights_flags(cfg, mode: str) -> None:
    """--resume DIR --ckpt FILE name one file together; neither half may be dropped silently."""
    e = cfg.eval
    resume, ckpt = e.get("resume"), e.get("ckpt")
    if (resume is None) != (ckpt is None):
        given, other = ("--resume", "--ckpt") if ckpt is None else ("--ckpt", "--resume")
        raise ValueError(f"{given} is given without {other}: the weights are --resume DIR --ckpt FILE "
                         f"(eval.resume, eval.ckpt), or name the file with --pretrained_path")
    weights = e.pretrained_path if mode == "eval" else cfg.train.get("init_from")
    if weights is not None:
        check_weights_file(str(weights))
    if resume is None:
        return
    joined = os.path.join(str(resume), str(ckpt))
    if e.pretrained_path is not None and os.path.normpath(str(e.pretrained_path)) != os.path.normpath(joined):
        raise ValueError(f"--resume {resume} --ckpt {ckpt} and --pretrained_path {e.pretrained_path} name two "
                         f"different weight files; give one of them")
    if mode == "pretrain" and os.path.isfile(joined):
        own = os.path.normpath(os.path.join(str(cfg.output_dir), "checkpoints"))
        if os.path.normpath(os.path.dirname(os.path.abspath(joined))) != os.path.abspath(own):
            raise ValueError(f"--resume {resume} --ckpt {ckpt}: training resumes from the checkpoints of its own "
                             f"output_dir ({own}), not from another folder's file; to start from those weights "
                             f"use --pretrained_path {joined}")


def check_weights_file(path: str) -> None:
    """The generator weights exist and open (memory-mapped: only the archive's directory is read), so that a wrong
    --resume/--ckpt or --pretrained_path stops before the tokenizer and the Inception are loaded."""
    import torch

    from core.loading import load_file
    if not os.path.isfile(path):
        raise FileNotFoundError(f"not found: {path} (the generator weights: --pretrained_path, or --resume DIR "
                                f"--ckpt FILE)")
    try:
        torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # legacy (non-zip) files load without mmap; anything unreadable gets load_file's one line
        load_file(path, "generator weights")


def check_eval_size(cfg) -> None:
    """eval.size = [H, W]: the column tokenizer is fully convolutional in width only, so H must be its height."""
    size = OmegaConf.to_container(cfg.eval.size) if OmegaConf.is_config(cfg.eval.size) else cfg.eval.size
    h, w, cw = None, None, int(cfg.data.column_width)
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) for v in size):
        h, w = size
    if h is None or h < 1 or w < 1:
        raise ValueError(f"eval.size must be [H, W], two positive integers, got {size!r}")
    if h != int(cfg.data.image_size):
        raise ValueError(f"eval.size height {h}: the column tokenizer makes images {cfg.data.image_size} px high "
                         f"(data.image_size; only the width can change); ask for eval.size=[{cfg.data.image_size},{w}]")
    if w % cw or w < 2 * cw:
        raise ValueError(f"eval.size width {w} is not a multiple >= 2 of the column width {cw} (data.column_width): "
                         f"one token per {cw} px, at least 2 tokens")


def check_tokenizer_file(cfg) -> None:
    """The tokenizer file exists, reads, and makes the images and tokens this config expects."""
    from models import get_family
    from tokenizer.column_ckpt import column_geometry
    path = cfg.tokenizer.ckpt
    g = column_geometry(path)
    h, cw = int(cfg.data.image_size), int(cfg.data.column_width)
    where = f"tokenizer {path or 'assets/equ_tokenizer.ckpt'} (tokenizer.ckpt)"
    if g["height"] != h or g["downsample"] != cw:
        raise ValueError(f"{where} makes one token per {g['downsample']} px of {g['height']}-px-high images, but "
                         f"data.image_size={h}, data.column_width={cw}")
    flavour = get_family(cfg.family).flavours.get(str(cfg.model.flavour))
    dim = cfg.model.get("vae_embed_dim") or (flavour.defaults.get("vae_embed_dim") if flavour else None)
    if dim is not None and int(dim) != g["embed_dim"]:
        raise ValueError(f"{where} makes {g['embed_dim']}-d tokens, but model.vae_embed_dim (--vae_embed_dim) is "
                         f"{dim}")
