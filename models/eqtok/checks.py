"""Value checks of family `eqtok` (models/eqtok/) that read no weights, run before anything large loads: the crop
the tokenizer can take, the loss weights' ranges, and the weight files the run will read (LPIPS, DINO, DINOv2)."""
from __future__ import annotations

import math
import os

from omegaconf import OmegaConf

NONNEG_WEIGHTS = ("perceptual_weight", "kl_weight", "disc_weight", "semantic_weight")
STARTS = ("disc_start", "semantic_start")
CHANNELS_OF_KIND = {"imagefolder": 3, "fmnist": 1}  # synthetic: data.channels


def _number(key: str, v, integer: bool = False) -> None:
    ok = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0 and (
        not integer or float(v).is_integer())
    if not ok:
        raise ValueError(f"config key '{key}' must be {'an integer' if integer else 'a number'} >= 0, got {v!r}")


def check_config(cfg, mode: str) -> None:
    from models.eqtok.lr import schedule_of
    from tokenizer.column_ckpt import autoencoder_config
    ae = autoencoder_config(OmegaConf.to_container(cfg.model, resolve=True))
    _check_images(cfg, ae)
    _check_networks(cfg, ae)
    L = cfg.loss
    for k in NONNEG_WEIGHTS:
        _number(f"loss.{k}", L[k])
    for k in STARTS:
        _number(f"loss.{k}", L[k], integer=True)
    _check_perceptual(L)
    teacher = str(L.semantic_teacher)
    if teacher not in ("none", "dinov2") and ":" not in teacher:
        raise ValueError(f"loss.semantic_teacher must be none, dinov2 or package.module:factory, got {teacher!r}")
    if float(L.semantic_weight) > 0 and teacher == "dinov2":
        from models.eqtok.vit import DINOV2_URL, require_file
        require_file(L.dinov2_path, "DINOv2 ViT-B/14 (loss.dinov2_path)", DINOV2_URL)
    if str(cfg.model.get("discriminator", "conv")) == "dino":
        from models.eqtok.vit import DINO_URL, require_file
        require_file(cfg.model.get("dino_path"), "DINO ViT-S/16 (model.dino_path)", DINO_URL)
    schedule_of(cfg)  # train.ae_lr_schedule and its numbers


def _check_images(cfg, ae: dict) -> None:
    """The column tokenizer's height is fixed by its size; its width must be whole columns, at least two."""
    d = cfg.data
    down = 2 ** (len(ae["ch_mult"]) - 1)
    h, w = int(d.image_size), int(d.crop_width)
    if h != int(ae["resolution"]):
        raise ValueError(f"data.image_size={h}, but the column tokenizer (model.flavour={cfg.model.flavour}) is built "
                         f"for {ae['resolution']}-px-high images (model.resolution)")
    if w % down or w < 2 * down:
        raise ValueError(f"data.crop_width={w} is not a multiple >= 2 of the column width {down} (one token per {down} "
                         f"px; reflect padding needs 2 columns)")
    if str(d.kind) == "synthetic" and int(d.synthetic_n) < 1:
        raise ValueError(f"config key 'data.synthetic_n' must be an integer >= 1, got {d.synthetic_n}")
    want = CHANNELS_OF_KIND.get(str(d.kind), int(d.channels))
    if want != int(ae["in_channels"]):
        what = "data.channels" if str(d.kind) not in CHANNELS_OF_KIND else f"data.kind={d.kind}"
        raise ValueError(f"{what} gives {want}-channel images, but the column tokenizer (model.flavour="
                         f"{cfg.model.flavour}) takes {ae['in_channels']} (model.in_channels)")


def _check_networks(cfg, ae: dict) -> None:
    """Widths the GroupNorms of the autoencoder (32 groups) and of the conv discriminator (8 groups) can split."""
    if int(ae["ch"]) < 1 or int(ae["ch"]) % 32:
        raise ValueError(f"model.ch={ae['ch']}: the column tokenizer's widths must be multiples of 32 (GroupNorm "
                         f"with 32 groups)")
    m = cfg.model
    if str(m.get("discriminator", "conv")) == "conv":
        ch, layers = m.get("disc_channels", 64), m.get("disc_layers", 3)
        if not isinstance(layers, int) or layers < 1:
            raise ValueError(f"model.disc_layers must be an integer >= 1, got {layers!r}")
        if not isinstance(ch, int) or ch < 4 or ch % 4:
            raise ValueError(f"model.disc_channels must be a multiple of 4 (GroupNorm with 8 groups of twice the "
                             f"width), got {ch!r}")


def _check_perceptual(L) -> None:
    """lpips with a file named that is not there is an error (a silent L1-only run is not what was asked); a null
    path turns LPIPS off with a logged line (models.eqtok.perceptual_metric)."""
    kind = str(L.perceptual)
    if kind not in ("lpips", "none"):
        raise ValueError(f"loss.perceptual must be lpips or none, got {L.perceptual!r}")
    if kind == "lpips" and float(L.perceptual_weight) > 0 and L.lpips_path is not None:
        if not os.path.isfile(str(L.lpips_path)):
            raise FileNotFoundError(f"LPIPS-VGG weights not found: {L.lpips_path} (loss.lpips_path; one file with the "
                                    f"VGG-16 features and the LPIPS lin layers, see models/eqtok/lpips.py); set "
                                    f"loss.lpips_path=null or loss.perceptual=none to train without LPIPS")
