"""Image checks and the two preprocessing pipelines that produce the published FID numbers.

'pytorch-fid' (pytorch-fid, ENAT/AutoNAT): float in [0, 1] -> torch bilinear resize to 299 (align_corners=False,
    half-pixel centres, no antialias) -> 2x - 1. uint8 input is divided by 255 first; float input is used as is, so
    non-quantised decoder output can be fed directly as ENAT/AutoNAT do.
'adm' (ADM evaluator, TF1 graph): uint8 values as float -> TF1 ResizeBilinear (source = i * in/out, no half-pixel
    offset, no antialias) -> (x - 128) / 128. Only uint8 input: ADM's samples are quantised before evaluation.
Both resize even at 299 (identity there), so the same function serves every input size.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

MODES = ("pytorch-fid", "adm")
INCEPTION_SIZE = 299


def check_images(images: torch.Tensor, mode: str) -> torch.Tensor:
    """Validate an image batch and return it as [B, 3, H, W] (grayscale repeated), dtype unchanged."""
    if mode not in MODES:
        raise ValueError(f"unknown preprocessing mode {mode!r}; expected one of {MODES}")
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor [B, 3|1, H, W], got {type(images).__name__}")
    if images.dim() != 4 or images.shape[1] not in (1, 3):
        hint = " (channels last? permute(0, 3, 1, 2) first)" if images.dim() == 4 and images.shape[-1] in (1, 3) else ""
        raise ValueError(f"images must have shape [B, 3|1, H, W], got {tuple(images.shape)}{hint}")
    if images.dtype == torch.uint8:
        pass
    elif images.dtype.is_floating_point:
        if mode == "adm":
            raise TypeError("mode 'adm' expects uint8 images (ADM evaluates quantised samples); got "
                        f"{images.dtype}. Quantise first, e.g. (x * 255).clamp(0, 255).to(torch.uint8)")
        if images.numel():
            lo, hi = float(images.min()), float(images.max())
            if not (lo >= 0.0 and hi <= 1.0):  # also rejects NaN
                raise ValueError(f"float images must lie in [0, 1], got range [{lo:.4g}, {hi:.4g}]"
                                 " (images in [-1, 1]? use (x + 1) / 2)")
    else:
        raise TypeError(f"images must be uint8 (0..255) or float in [0, 1], got dtype {images.dtype}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images


def tf1_resize_bilinear(x: torch.Tensor, size: int) -> torch.Tensor:
    """TF1 `ResizeBilinear(align_corners=False, half_pixel_centers=False)` of float [B, C, H, W] to size x size.

    Output pixel i samples source position i * (in / out); the upper neighbour is clamped to the last row/column.
    Lerps are done along width first, then height, as TF does, with the scale and positions in float32.
    """
    def taps(n_in: int):
        scale = torch.tensor(n_in / size, dtype=torch.float32)
        pos = torch.arange(size, dtype=torch.float32) * scale
        lo = pos.floor()
        frac = (pos - lo).to(x.device)
        i0 = lo.long().clamp(0, n_in - 1)
        i1 = (i0 + 1).clamp(max=n_in - 1)
        return i0.to(x.device), i1.to(x.device), frac

    h0, h1, hf = taps(x.shape[-2])
    w0, w1, wf = taps(x.shape[-1])
    top, bottom = x[..., h0, :], x[..., h1, :]
    top = top[..., w0] + (top[..., w1] - top[..., w0]) * wf
    bottom = bottom[..., w0] + (bottom[..., w1] - bottom[..., w0]) * wf
    return top + (bottom - top) * hf[:, None]


def preprocess(images: torch.Tensor, mode: str, size: int = INCEPTION_SIZE) -> torch.Tensor:
    """uint8 [B, 3|1, H, W] (or float [0, 1] for 'pytorch-fid') -> float32 Inception input [B, 3, size, size]."""
    images = check_images(images, mode)
    if mode == "pytorch-fid":
        x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        return 2.0 * x - 1.0
    x = tf1_resize_bilinear(images.float(), size)
    return (x - 128.0) / 128.0
