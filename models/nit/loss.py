"""NiT's training objective and optimiser settings.

loss = MSE + DIR + repa_coeff · REPA, all averaged over the tokens of the pack (large images weigh more):
  x_t = (1 − t)·x0 + t·ε (t = 1 noise), target v = ε − x0, one t per image ~ logit-normal(0, 1) (sigmoid of N(0, 1)),
  MSE  = mean over tokens of mean over the token's C·p·p values of (v̂ − v)²
  DIR  = mean over tokens of 1 − cos(v̂, v)                       (cosine over the token's C·p·p values)
  REPA = mean over tokens of 1 − cos(z, projector(h_encoder_depth)) (z = frozen encoder features, one per token)
Labels are replaced by the null class (model.null_label, 1000 for ImageNet) with probability `label_drop` per image.

Randomness: drawn in this order from `generator` (a CPU torch.Generator; the global RNG when None), each only when
not passed explicitly: t (B normals), ε (N·C·p·p normals, float32), label drop (B uniforms). Draws happen on the CPU
and are moved to the batch's device, so a value reproduces across devices.

REPA targets: `batch['repa_target']` Float[N, z_dim] (precomputed, in the pack's token order) if present, else
`repa_encoder(batch)` under no_grad, returning Float[N, z_dim] or a list of per-image grids (z_dim, h, w) matching
hw_list (packed here row-major). Any frozen feature extractor fits (RADIO-v2.5 in the paper, at 16× the latent
grid so one patch = one token); `repa_image_encoder(encoder)` turns an image encoder into such a callable, and
models.nit.repa_encoders builds the encoder from a local RADIO checkpoint, an exported file or a Python factory.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from models.family_defaults import family_defaults

# constant LR = base × (packs per optimiser step) / base batch; 8 GPUs × 1 pack: 1e-4 (L/XL/XXL), 4e-4 (S/B)
BASE_LR = 5e-5
BASE_BATCH = {"NiT_S": 1, "NiT_B": 1, "NiT_L": 4, "NiT_XL": 4, "NiT_XXL": 4, "debug": 1}


def nit_lr(flavour: str, packs_per_step: int, base_lr: float = BASE_LR) -> float:
    return base_lr * packs_per_step / BASE_BATCH.get(flavour, 4)


def nit_optimizer(model: nn.Module, lr: float) -> torch.optim.AdamW:
    """AdamW with the official betas, weight decay (on every parameter) and eps: train.betas / weight_decay / eps
    of configs/family/nit.yaml."""
    t = family_defaults("nit", "train")
    return torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, betas=tuple(t["betas"]),
                             weight_decay=t["weight_decay"], eps=t["eps"])


def _lengths(hw_list: torch.Tensor, device) -> torch.Tensor:
    hw = torch.as_tensor(hw_list).to(torch.int64)
    return (hw[:, 0] * hw[:, 1]).to(device)


def sample_t(n: int, generator: torch.Generator | None, P_mean: float, P_std: float):
    """Logit-normal t: sigmoid(P_mean + P_std·N(0, 1)) = σ/(1+σ) with σ = exp(·)."""
    return torch.sigmoid(P_mean + P_std * torch.randn(n, generator=generator))


def pack_features(feats, hw_list) -> torch.Tensor:
    """Float[N, z] as is, or a list of (z, h, w) grids -> Float[N, z] in the pack's row-major token order."""
    if torch.is_tensor(feats):
        return feats
    hw = torch.as_tensor(hw_list).tolist()
    out = []
    for i, (f, (h, w)) in enumerate(zip(feats, hw)):
        if tuple(f.shape[1:]) != (h, w):
            raise ValueError(f"REPA features of image {i} have grid {list(f.shape[1:])}, the latent has {[h, w]}")
        out.append(f.flatten(1).T)
    return torch.cat(out)


def repa_image_encoder(encoder: Callable[[torch.Tensor], torch.Tensor], patch: int = 16,
                       mode: str = "bicubic") -> Callable[[dict], list[torch.Tensor]]:
    """A `repa_encoder` from a frozen image encoder with patch size `patch`: each image of batch['images']
    (list of Float (3, H, W) in the encoder's input range) gets the pack's flip (batch['flip'], when present), is
    resized to (h·patch, w·patch) for its latent grid (h, w) so that one encoder patch is one NiT token, and
    `encoder(img[None])` must return its patch features as (1, z, h, w) or (1, h·w, z) (cls/register tokens
    removed). The resize filter of the official pipeline is not documented; `mode` picks it."""
    def run(batch: dict) -> list[torch.Tensor]:
        hw = torch.as_tensor(batch["hw_list"]).tolist()
        images = batch["images"]
        flips = batch.get("flip", torch.zeros(len(hw), dtype=torch.bool)).tolist()
        if len(images) != len(hw):
            raise ValueError(f"batch['images'] holds {len(images)} images for {len(hw)} latents")
        out = []
        for img, (h, w), flip in zip(images, hw, flips):
            img = img.flip(-1) if flip else img
            img = F.interpolate(img[None].float(), size=(h * patch, w * patch), mode=mode,
                                align_corners=False, antialias=mode in ("bilinear", "bicubic"))
            z = encoder(img)
            if z.dim() == 3:  # (1, h·w, z) tokens, row-major
                z = z[0].T.reshape(-1, h, w)
            elif z.dim() == 4:
                z = z[0]
            else:
                raise ValueError(f"REPA encoder returned shape {list(z.shape)}; need (1, z, h, w) or (1, h*w, z)")
            out.append(z)
        return out
    return run


def nit_loss(model: nn.Module, batch: dict, *, label_drop: float | None = None, repa_coeff: float | None = None,
             repa_encoder: Callable | None = None, generator: torch.Generator | None = None,
             t: torch.Tensor | None = None, noise: torch.Tensor | None = None, drop: torch.Tensor | None = None,
             P_mean: float | None = None, P_std: float | None = None) -> tuple[torch.Tensor, dict]:
    """batch: {'x': Float[N, C, p, p] clean packed latents, 'hw_list': Int[B, 2], 'label': Long[B],
    optional 'repa_target': Float[N, z_dim]}. t Float[B], noise like x, drop Bool[B] override the random draws.
    label_drop, repa_coeff, P_mean, P_std left None: the loss defaults of configs/family/nit.yaml.
    `model` may be DDP-wrapped: it is called, never looked into (except for its null label)."""
    given = {"label_drop": label_drop, "repa_coeff": repa_coeff, "P_mean": P_mean, "P_std": P_std}
    if any(v is None for v in given.values()):
        defaults = family_defaults("nit", "loss")
        given = {k: float(defaults[k]) if v is None else v for k, v in given.items()}
    label_drop, repa_coeff, P_mean, P_std = given.values()
    x0, hw_list, labels = batch["x"], batch["hw_list"], batch["label"]
    device = x0.device
    b = labels.shape[0]
    lengths = _lengths(hw_list, device)
    if int(lengths.sum()) != x0.shape[0]:
        raise ValueError(f"batch['x'] has {x0.shape[0]} tokens, hw_list needs {int(lengths.sum())}")
    net = model.module if hasattr(model, "module") else model
    null_label = int(getattr(net, "null_label", 1000))

    if t is None:
        t = sample_t(b, generator, P_mean, P_std)
    if noise is None:
        noise = torch.randn(x0.shape, generator=generator, dtype=torch.float32)
    if drop is None:
        drop = torch.rand(b, generator=generator) < label_drop
    t = t.to(device=device, dtype=torch.float32)
    noise = noise.to(device=device, dtype=x0.dtype)
    drop = drop.to(device)
    y = torch.where(drop, torch.full_like(labels, null_label), labels)

    tt = t.repeat_interleave(lengths, output_size=x0.shape[0]).view(-1, *([1] * (x0.dim() - 1))).to(x0.dtype)
    x_t = (1 - tt) * x0 + tt * noise
    target = noise - x0

    use_repa = repa_coeff > 0
    if use_repa:
        pred, zs = model(x_t, t, y, hw_list, return_zs=True)
    else:
        pred, zs = model(x_t, t, y, hw_list), None
    pred = pred.float().flatten(1)
    target = target.float().flatten(1)
    mse = (pred - target).square().mean(dim=1).mean()
    direction = (1 - F.cosine_similarity(pred, target, dim=1)).mean()
    loss = mse + direction
    logs = {"mse": mse.item(), "dir": direction.item(), "t_mean": t.mean().item()}
    if use_repa:
        if "repa_target" in batch:
            z = batch["repa_target"]
        elif repa_encoder is not None:
            with torch.no_grad():
                z = pack_features(repa_encoder(batch), hw_list)
        else:
            raise ValueError("repa_coeff > 0 needs batch['repa_target'] or a repa_encoder (or set repa_coeff=0)")
        z = z.to(device=device, dtype=torch.float32).detach()
        if z.shape != (x0.shape[0], zs.shape[1]):
            raise ValueError(f"REPA target must be [{x0.shape[0]}, {zs.shape[1]}] (one feature per token), "
                             f"got {list(z.shape)}")
        repa = (1 - F.cosine_similarity(zs.float(), z, dim=1)).mean()
        loss = loss + repa_coeff * repa
        logs["repa"] = repa.item()
    logs["loss"] = loss.item()
    return loss, logs
