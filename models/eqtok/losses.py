"""Training-loss pieces of the column tokenizer as plain functions (the release's `LPIPSWithDiscriminator` math),
with the networks they need passed in: any perceptual metric, any discriminator, any semantic teacher.

Autoencoder objective at step `step` (paper weights 1, 0.01, 1 (LPIPS), 0.5, 5):
    rec   = |x - x_hat| + perceptual_weight * perceptual(x, x_hat)        (per pixel; perceptual per image)
    nll   = sum(rec / exp(logvar) + logvar) / B                            (learnable scalar logvar, init 0)
    kl    = sum(0.5 * mean^2) / B                                          (the posterior's L2 "KL")
    g     = -mean(D(x_hat))                                                (hinge generator term)
    total = nll + kl_weight * kl + adaptive_weight * disc_factor * g + semantic_weight * semantic
with disc_factor = 0 before `disc_start` and the semantic term off before `semantic_start`. The adaptive weight
balances the two gradients at the decoder's last layer: ||d nll|| / (||d g|| + 1e-4), clamped to [0, 1e4],
detached, times `disc_weight`. The discriminator minimises 0.5 (mean relu(1 - D(x)) + mean relu(1 + D(x_hat))).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from tokenizer.column import l2_penalty

WEIGHTS = dict(perceptual_weight=1.0, kl_weight=0.01, disc_weight=0.5, semantic_weight=5.0,
               disc_start=5001, semantic_start=20001)


def start_factor(step: int, start: int) -> float:
    """1 from `start` on, 0 before (the release's adopt_weight)."""
    return 0.0 if step < start else 1.0


def reconstruction_nll(x: torch.Tensor, x_hat: torch.Tensor, logvar: torch.Tensor,
                       perceptual: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
                       perceptual_weight: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(nll, mean rec) for images (B, C, H, W); `perceptual(x, x_hat)` returns one distance per image, any shape
    that broadcasts to (B, 1, 1, 1)."""
    rec = (x.float() - x_hat.float()).abs()
    if perceptual is not None and perceptual_weight > 0:
        p = perceptual(x.contiguous(), x_hat.contiguous()).float()
        rec = rec + perceptual_weight * p.reshape(x.shape[0], *([1] * (x.dim() - 1)))
    nll = rec / torch.exp(logvar) + logvar
    return nll.sum() / x.shape[0], rec.mean()


def kl_term(mean: torch.Tensor) -> torch.Tensor:
    return l2_penalty(mean.float()).sum() / mean.shape[0]


def generator_hinge(logits_fake: torch.Tensor) -> torch.Tensor:
    return -logits_fake.float().mean()


def discriminator_hinge(logits_real: torch.Tensor, logits_fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean())


def adaptive_weight(nll: torch.Tensor, g_loss: torch.Tensor, last_layer: torch.Tensor,
                    disc_weight: float = 0.5) -> torch.Tensor:
    """||grad nll|| / (||grad g|| + 1e-4) at `last_layer` (the decoder's conv_out weight), clamped, detached."""
    nll_grad = torch.autograd.grad(nll, last_layer, retain_graph=True)[0]
    g_grad = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = torch.norm(nll_grad) / (torch.norm(g_grad) + 1e-4)
    return torch.clamp(w, 0.0, 1e4).detach() * disc_weight


def semantic_term(semantic_out: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """sum((semantic_out - teacher)^2) / B, both (B, C, h, w) (e.g. DINOv2 patch tokens laid out as a map)."""
    return (semantic_out.float() - teacher.float()).pow(2).sum() / semantic_out.shape[0]


def autoencoder_loss(x: torch.Tensor, x_hat: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor, step: int, *,
                     last_layer: torch.Tensor | None = None,
                     perceptual: Callable | None = None, discriminator: Callable | None = None,
                     semantic_out: torch.Tensor | None = None, semantic_teacher: torch.Tensor | None = None,
                     **weights) -> tuple[torch.Tensor, dict]:
    """The autoencoder side of one step (see module doc); `weights` override WEIGHTS."""
    w = {**WEIGHTS, **weights}
    unknown = set(weights) - set(WEIGHTS)
    if unknown:
        raise TypeError(f"unknown loss weights {sorted(unknown)}; known: {sorted(WEIGHTS)}")
    nll, rec = reconstruction_nll(x, x_hat, logvar, perceptual, w["perceptual_weight"])
    kl = kl_term(mean)
    total = nll + w["kl_weight"] * kl
    logs = {"nll": nll.item(), "rec": rec.item(), "kl": kl.item(), "logvar": float(logvar.detach())}
    disc_factor = start_factor(step, w["disc_start"])
    if discriminator is not None and disc_factor > 0:
        g = generator_hinge(discriminator(x_hat.contiguous()))
        if last_layer is None:
            raise ValueError("the adaptive GAN weight needs last_layer (the decoder's conv_out.weight)")
        d_w = adaptive_weight(nll, g, last_layer, w["disc_weight"]) if torch.is_grad_enabled() else nll.new_zeros(())
        total = total + d_w * disc_factor * g
        logs.update(g=g.item(), d_weight=d_w.item())
    if semantic_out is not None and start_factor(step, w["semantic_start"]) > 0:
        sem = semantic_term(semantic_out, semantic_teacher)
        total = total + w["semantic_weight"] * sem
        logs["semantic"] = sem.item()
    logs["loss"] = total.item()
    return total, logs


def discriminator_loss(x: torch.Tensor, x_hat: torch.Tensor, discriminator: Callable, step: int,
                       disc_start: int = WEIGHTS["disc_start"]) -> tuple[torch.Tensor, dict]:
    """The discriminator side: hinge on real images vs detached reconstructions, off before disc_start."""
    real, fake = discriminator(x.contiguous().detach()), discriminator(x_hat.contiguous().detach())
    d = start_factor(step, disc_start) * discriminator_hinge(real, fake)
    return d, {"d_loss": d.item(), "logits_real": real.float().mean().item(), "logits_fake": fake.float().mean().item()}
