"""Differentiable augmentation in front of the release's DINO discriminator (`DiffAug(prob=1, cutout=0.2)`, the
StyleGAN-T recipe), applied to real and reconstructed images alike, in both GAN terms.

Three transforms, each switched on for the whole batch with probability `prob` (the release uses 1: always), with
per-image amounts; images (B, C, H, W) in [-1, 1]:
- translation by integers (th, tw), |th| <= round(H/8), |tw| <= round(W/8), uncovered pixels 0;
- colour: brightness + (u - 0.5), saturation (x - mean_c) * 2u + mean_c, contrast (x - mean_chw) * (u + 0.5) + mean_chw;
- cutout: a round(cutout*H) x round(cutout*W) box set to 0, its centre uniform over the image.
Random numbers come from `generator` (CPU) in the release's order: 3 switches, then 7 uniforms per image.
"""
from __future__ import annotations

import torch


def _shift(x: torch.Tensor, th: torch.Tensor, tw: torch.Tensor) -> torch.Tensor:
    """out[b, :, i, j] = x[b, :, i + th[b], j + tw[b]], 0 outside the image."""
    b, c, h, w = x.shape
    pad = torch.nn.functional.pad(x, (1, 1, 1, 1))  # a zero border to point out-of-range pixels at
    ih = (torch.arange(h, device=x.device)[None] + th[:, None] + 1).clamp(0, h + 1)  # (B, H)
    iw = (torch.arange(w, device=x.device)[None] + tw[:, None] + 1).clamp(0, w + 1)  # (B, W)
    rows = pad.gather(2, ih[:, None, :, None].expand(b, c, h, w + 2))
    return rows.gather(3, iw[:, None, None, :].expand(b, c, h, w))


def diff_augment(x: torch.Tensor, prob: float = 1.0, cutout: float = 0.2,
                 generator: torch.Generator | None = None) -> torch.Tensor:
    if prob <= 0:
        return x
    x = x.float()
    trans, color, cut = (torch.rand(3, generator=generator) <= prob).tolist()
    b, _, h, w = x.shape
    if not (trans or color or cut):
        return x
    u = torch.rand(7, b, generator=generator).to(x.device)
    if trans:
        dh, dw = round(h * 0.125), round(w * 0.125)
        th = (u[0] * (2 * dh + 1)).floor().long() - dh
        tw = (u[1] * (2 * dw + 1)).floor().long() - dw
        x = _shift(x, th, tw)
    if color:
        x = x + (u[2] - 0.5).view(b, 1, 1, 1)
        m = x.mean(1, keepdim=True)
        x = (x - m) * (2 * u[3]).view(b, 1, 1, 1) + m
        m = x.mean((1, 2, 3), keepdim=True)
        x = (x - m) * (u[4] + 0.5).view(b, 1, 1, 1) + m
    if cut:
        ch, cw = round(h * cutout), round(w * cutout)
        top = (u[5] * (h + 1 - ch % 2)).floor().long() - ch // 2
        left = (u[6] * (w + 1 - cw % 2)).floor().long() - cw // 2
        r = torch.arange(h, device=x.device)[None]
        c = torch.arange(w, device=x.device)[None]
        in_r = (r >= top[:, None]) & (r < top[:, None] + ch)  # (B, H)
        in_c = (c >= left[:, None]) & (c < left[:, None] + cw)  # (B, W)
        x = x * (~(in_r[:, :, None] & in_c[:, None, :]))[:, None].to(x.dtype)
    return x
