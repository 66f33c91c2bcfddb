"""Family `eqtok` training the column tokenizer: data, the one-backward loss, parameter groups with their LR and
EMA schedules, the reconstruction preview; the network with its loss modules is models/eqtok/model.py."""
from __future__ import annotations

import logging


import torch
from torch import nn

from core.images import save_grid, to_uint8
from datasets.sampling import drawing_row_batches
from models.family import Family, Training, always
from models.eqtok import losses as cl
from models.eqtok.ema import warmup_decay
from models.eqtok.checks import check_config
from models.eqtok.lr import group_lrs, lr_of, schedule_of, scheduled_groups
from models.eqtok.model import FLAVOURS

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------------- data
DATA_KINDS = ("imagefolder", "fmnist", "synthetic")


def eqtok_dataset(cfg, split: str = "train"):
    d = cfg.data
    h, w = int(d.image_size), int(d.crop_width)
    if d.kind == "imagefolder":
        if not d.path:
            raise ValueError("data.path is empty: give an ImageNet-layout folder <class>/<images>")
        from datasets.column_images import ImageFolderColumns
        return ImageFolderColumns(str(d.path), h, w, bool(d.hflip) and split == "train")
    if d.kind == "fmnist":
        from datasets.column_images import FashionMNISTColumns
        return FashionMNISTColumns(d.path, split, h, w, bool(d.hflip) and split == "train")
    if d.kind == "synthetic":
        from datasets.column_images import SyntheticColumns
        return SyntheticColumns(int(d.synthetic_n), 4, h, w, int(d.channels))
    raise ValueError(f"family 'eqtok': data.kind must be one of {', '.join(DATA_KINDS)}, got '{d.kind}'")


# ----------------------------------------------------------------------------------------------------- loss
_PLUGS: dict = {}


def loss_weights(cfg) -> dict:
    L = cfg.loss
    return {k: float(L[k]) if "start" not in k else int(L[k]) for k in cl.WEIGHTS}


def perceptual_metric(cfg, device):
    """LPIPS from loss.lpips_path; None (L1 only), said once, when that path is null (a path to a missing file stops
    the run before anything loads: models/eqtok/checks.py)."""
    key = ("perceptual", str(cfg.loss.perceptual), str(cfg.loss.lpips_path), str(device))
    if key not in _PLUGS:
        fn = None
        if str(cfg.loss.perceptual) == "lpips" and float(cfg.loss.perceptual_weight) > 0:
            path = cfg.loss.lpips_path
            if path is not None:
                from models.eqtok.lpips import load_lpips
                with torch.random.fork_rng(devices=[]):
                    fn = load_lpips(str(path)).to(device)
            else:
                log.info("perceptual loss off: loss.lpips_path is null (LPIPS-VGG weights, see models/eqtok/lpips.py); "
                         "training with L1 only")
        elif str(cfg.loss.perceptual) not in ("lpips", "none"):
            raise ValueError(f"loss.perceptual must be lpips or none, got {cfg.loss.perceptual!r}")
        _PLUGS[key] = fn
    return _PLUGS[key]


def semantic_teacher(cfg, device):
    """The frozen semantic teacher of loss.semantic_teacher (built once per setting), or None when the alignment is
    off (weight 0) or no teacher is configured (said once)."""
    L = cfg.loss
    key = ("teacher", str(L.semantic_teacher), str(L.dinov2_path), str(L.dinov2_flavour),
           float(L.semantic_weight) > 0, str(device))
    if key not in _PLUGS:
        net = None
        if float(L.semantic_weight) > 0:
            from models.eqtok.semantic import build_teacher
            with torch.random.fork_rng(devices=[]):
                net = build_teacher(str(L.semantic_teacher), L.dinov2_path, str(L.dinov2_flavour))
            if net is None:
                log.info("semantic alignment off: loss.semantic_teacher is none (loss.semantic_weight=%s unused)",
                         L.semantic_weight)
            else:
                net = net.to(device)
        _PLUGS[key] = net
    return _PLUGS[key]


def eqtok_loss(model: nn.Module, batch: dict, ctx):
    cfg = ctx.cfg
    x = batch["image"]
    loss, logs = model(x, int(ctx.step), loss_weights(cfg), perceptual_metric(cfg, x.device),
                       semantic_teacher(cfg, x.device))
    s = schedule_of(cfg)
    if s is not None:  # the engine's own "lr" is not what this family's groups use
        logs.update(lr_ae=lr_of(s, int(ctx.step)), lr_disc=float(cfg.train.lr))
    return loss, logs


def eqtok_param_groups(model, cfg):
    """Two groups as the release's two Adam optimizers (autoencoder; discriminator), without weight decay, each
    named for its train.ae_lr_schedule. Stage-2 frozen parts are left out; so is loss.logvar unless loss.learn_logvar (the
    release never optimises it: it stays 0)."""
    if not bool(cfg.loss.learn_logvar):
        model.loss.logvar.requires_grad_(False)
    ae, disc = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (disc if name.startswith("loss.discriminator.") else ae).append(p)
    return scheduled_groups(ae, disc, cfg)


def eqtok_ema_decay(step: int, cfg) -> float:
    """LitEma: min(decay, (1 + n) / (10 + n)) with n = updates so far, this one included."""
    return warmup_decay(float(cfg.train.ema_decay), step + 1)


@torch.inference_mode()
def reconstruction_preview(ema, cfg, device, path) -> None:
    """Held-out (fmnist: test split) images over their reconstructions from the posterior mean."""
    split = "test" if cfg.data.kind == "fmnist" else "train"
    ds = eqtok_dataset(cfg, split)
    n = min(len(ds), int(cfg.sample.grid_per_class))
    x = ds.get_batch(torch.arange(n))["image"].to(device)
    rec = ema.decode(ema.encode_mean(x)).clamp(-1, 1)
    save_grid(to_uint8(torch.cat([x, rec], 0)).cpu(), 2, path)


FAMILY = Family(
    name="eqtok",
    flavours=FLAVOURS,
    config="configs/family/eqtok.yaml",
    dataset=eqtok_dataset,
    batches=drawing_row_batches,
    loss=eqtok_loss,
    check_config=check_config,
    training=Training(
        param_groups=eqtok_param_groups,
        group_lrs=group_lrs,
        ema_decay=eqtok_ema_decay,
        preview=reconstruction_preview,
        # the semantic decoder trains only with a teacher, the discriminator only after disc_start
        ddp_find_unused=always,
    ),
)
