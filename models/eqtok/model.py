"""Family `eqtok`: training the column tokenizer (tokenizer/column.py) with train.py, stage 1 and stage 2.

The network is the official module tree (encoder, decoder, semantic_decoder, quant_layer, post_quant_layer) plus a
`loss` module holding what Lightning keeps there (the scalar `logvar` and the discriminator), so our checkpoint's
EMA state dict minus `loss.*` is the tokenizer (`tokenizer.kind=column tokenizer.ckpt=<our checkpoint>`).

One step, one backward (the engine has one optimizer; AdamW with weight decay 0 and two parameter groups, the
autoencoder and the discriminator, each with its own LR schedule, equals the release's two Adam optimizers):
    total = autoencoder loss (L1 + perceptual NLL, 0.01 L2 "KL", adaptive-weight hinge generator term, semantic)
          + discriminator hinge on (real, detached reconstruction)
The generator term runs the discriminator with *detached* parameters (torch.func.functional_call), so it moves
only the autoencoder, and the discriminator term sees detached reconstructions, so it moves only the
discriminator. Reconstructions decode `sample()` latents (mean + per-image noise), as the release trains.

Discriminator (`model.discriminator`): `conv`, a small trainable patch discriminator, or `dino`, the release's
frozen DINO ViT-S/16 from the local file `model.dino_path` with trainable heads (models/eqtok/dino_disc.py; its
`loss.discriminator.heads.*` names are the released checkpoint's). Semantic alignment (`loss.semantic_teacher`):
any frozen module mapping images to the semantic decoder's feature grid (models/eqtok/semantic.py; `dinov2` from the
local file `loss.dinov2_path`), on when loss.semantic_weight > 0. The two optimizer groups (autoencoder,
discriminator) follow `train.ae_lr_schedule` (models/eqtok/lr.py).

Stage 2 (model.init_from = a stage-1 checkpoint, ours or the released Lightning file; model.stage2 = true): the
EMA weights are copied into the live modules, and encoder, quant_layer and logvar are frozen (left out of the
optimizer by param_groups), so only decoder, semantic_decoder, post_quant_layer (and the discriminator) train.
The stage-1 file's `loss.*` tensors that fit (logvar, discriminator heads) are loaded too, as the release's
non-strict load does (`model.init_loss=false`: they start fresh).
"""
from __future__ import annotations

import logging

import torch
from torch import nn

from core.loading import load_strict, mismatch
from core.released import read_released
from models.eqtok import losses as cl
from tokenizer.column import COLUMN_CONFIGS, ColumnAutoencoder, gaussian_sample, module_state_from_lightning
from tokenizer.column_ckpt import autoencoder_config

log = logging.getLogger(__name__)
FROZEN_IN_STAGE2 = ("encoder.", "quant_layer.", "loss.logvar")


class ConvDiscriminator(nn.Module):
    """A small patch discriminator (the default when no frozen-backbone discriminator is given): stride-2 convs,
    GroupNorm, LeakyReLU, a 1-channel logit map."""

    def __init__(self, in_channels: int = 3, ch: int = 64, layers: int = 3):
        super().__init__()
        mods, c = [nn.Conv2d(in_channels, ch, 4, 2, 1), nn.LeakyReLU(0.2)], ch
        for _ in range(layers - 1):
            mods += [nn.Conv2d(c, 2 * c, 4, 2, 1), nn.GroupNorm(8, 2 * c), nn.LeakyReLU(0.2)]
            c *= 2
        mods.append(nn.Conv2d(c, 1, 3, 1, 1))
        self.main = nn.Sequential(*mods)

    def forward(self, x):
        return self.main(x)


DISCRIMINATORS = ("conv", "dino")
DISC_ARGS = ("discriminator", "disc_channels", "disc_layers", "dino_path", "dino_flavour", "dino_key_depths",
             "dino_kernel", "dino_norm", "diffaug_prob", "diffaug_cutout")


def build_discriminator(in_channels: int, discriminator: str = "conv", disc_channels: int = 64,
                        disc_layers: int = 3, dino_path: str | None = None, dino_flavour: str = "vit_small_16",
                        dino_key_depths=(2, 5, 8, 11), dino_kernel: int = 9, dino_norm: str = "bn",
                        diffaug_prob: float = 1.0, diffaug_cutout: float = 0.2) -> nn.Module:
    if discriminator == "conv":
        return ConvDiscriminator(in_channels, disc_channels, disc_layers)
    if discriminator == "dino":
        from models.eqtok.dino_disc import DinoDiscriminator
        from models.eqtok.vit import load_dino
        with torch.random.fork_rng(devices=[]):  # the heads' initialisation does not depend on the file's size
            backbone = load_dino(dino_path, dino_flavour)
        return DinoDiscriminator(backbone, tuple(dino_key_depths), int(dino_kernel), str(dino_norm),
                                 aug_prob=float(diffaug_prob), cutout=float(diffaug_cutout))
    raise ValueError(f"model.discriminator must be one of {', '.join(DISCRIMINATORS)}, got {discriminator!r}")


class TokenizerLoss(nn.Module):
    def __init__(self, in_channels: int, **disc):
        super().__init__()
        self.logvar = nn.Parameter(torch.zeros(()))
        self.discriminator = build_discriminator(in_channels, **disc)


class EqTok(ColumnAutoencoder):
    def __init__(self, init_from: str | None = None, stage2: bool = False, init_loss: bool = True, **kw):
        disc = {k: kw.pop(k) for k in list(kw) if k in DISC_ARGS}
        if disc.get("discriminator") == "dino":  # before building the autoencoder: a missing file fails fast
            from models.eqtok.vit import require_file
            require_file(disc.get("dino_path"))
        super().__init__(**kw)
        self.ae_config = dict(kw)
        self.loss = TokenizerLoss(self.in_channels, **disc)
        self.stage2, self.init_loss = bool(stage2), bool(init_loss)
        if init_from:
            self.load_stage1(str(init_from))
        if self.stage2:
            if not init_from:
                raise ValueError("model.stage2=true needs model.init_from (the stage-1 checkpoint)")
            for name, p in self.named_parameters():
                if name.startswith(FROZEN_IN_STAGE2):
                    p.requires_grad_(False)

    @torch.no_grad()
    def load_stage1(self, path: str) -> None:
        """EMA autoencoder weights (and the live loss.* parts) of a stage-1 checkpoint: ours or Lightning."""
        obj = read_released(path, "stage-1 tokenizer checkpoint")
        own = self.state_dict()
        with torch.device("meta"):  # the plain autoencoder's key set (no loss.*)
            plain = ColumnAutoencoder(**self.ae_config)
        if isinstance(obj, dict) and obj.get("family") == "eqtok":
            ae = {k: v for k, v in obj["ema"].items() if not k.startswith("loss.")}
            if any(mismatch(plain, ae)):
                load_strict(plain, ae, path)  # raises the one-line error naming the keys
            file_loss = {k: v for k, v in obj["model"].items() if k.startswith("loss.")}
        else:
            light = obj.get("state_dict", obj)
            ae = module_state_from_lightning(light, plain, use_ema=True, source=path)
            file_loss = {k: v for k, v in light.items() if k.startswith("loss.")}
        loss = {}
        if self.init_loss:
            loss = {k: v for k, v in file_loss.items() if k in own}
            bad = [k for k, v in loss.items() if tuple(v.shape) != tuple(own[k].shape)]
            if bad:
                raise ValueError(f"{path}: loss.* tensors of another shape than this model's: {', '.join(bad[:5])}")
            fresh = [k for k in own if k.startswith("loss.") and k not in loss]
            log.info("%s: %d loss.* tensors loaded (logvar, discriminator), %d start fresh, %d of the file unused "
                     "(perceptual network, teacher, another discriminator)", path, len(loss), len(fresh),
                     len(file_loss) - len(loss))
        self.load_state_dict({**own, **ae, **loss}, strict=True)
        log.info("stage 2 initialised from the EMA weights of %s", path)

    def forward(self, x: torch.Tensor, step: int, weights: dict, perceptual=None, teacher=None):
        """(total loss, logs) of one step (see module doc); `teacher(images, size)`: the semantic teacher or None."""
        mean = self.encode_mean(x)
        z = gaussian_sample(mean)
        sem_on = weights["semantic_weight"] > 0 and step >= weights["semantic_start"] and teacher is not None
        target = None
        if sem_on:
            x_hat, sem = self.decode(z, semantic=True)
            target = teacher(x, tuple(sem.shape[-2:]))
            if tuple(target.shape) != tuple(sem.shape):
                raise ValueError(f"semantic teacher features {tuple(target.shape)} do not match the semantic "
                                 f"decoder output {tuple(sem.shape)} (channels and grid must agree)")
        else:
            x_hat, sem = self.decode(z), None
        disc = self.loss.discriminator
        frozen = {n: p.detach() for n, p in disc.named_parameters()}

        def disc_fixed(img):
            return torch.func.functional_call(disc, frozen, (img,))

        ae_loss, logs = cl.autoencoder_loss(
            x, x_hat, mean, self.loss.logvar, step,
            last_layer=self.decoder.conv_out.weight, perceptual=perceptual, discriminator=disc_fixed,
            semantic_out=sem, semantic_teacher=target, **weights)
        d_loss, d_logs = cl.discriminator_loss(x, x_hat, disc, step, weights["disc_start"])
        total = ae_loss + d_loss
        logs["ae_loss"] = logs.pop("loss")
        return total, {**logs, **d_logs, "loss": total.item()}


# ------------------------------------------------------------------------------------------------------ flavours
def _builder(name: str):
    def build(**kw) -> EqTok:
        return EqTok(**{**autoencoder_config({"flavour": name, **kw}),
                        **{k: v for k, v in kw.items() if k in DISC_ARGS + ("init_from", "stage2", "init_loss")}})
    build.defaults = dict(COLUMN_CONFIGS[name])
    return build


FLAVOURS = {name: _builder(name) for name in COLUMN_CONFIGS}
