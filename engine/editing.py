"""Image editing for any family with `Family.edit`: input images and a pixel mask -> a canvas, the tokenizer's
codes of it, the grid of codes to regenerate, and the family's edit.

Pixels: the input image sits on the output canvas at `anchor` (top, left); canvas pixels outside it are always
regenerated (outpainting), inside it the mask's True pixels are. The tokenizer turns the pixel mask into its code
grid (`Tokenizer.grid_mask`: a code is regenerated when any of its pixels is), so the kept codes are exactly the
input's codes and the kept pixels are the input's reconstruction there. Shared by engine/api.py and --mode edit.
"""
from __future__ import annotations

from pathlib import Path

import torch

from core.images import to_uint8

FILL = 128  # canvas pixels outside the image (always regenerated): mid grey, ~0 in [-1, 1]


# ------------------------------------------------------------------------------------------------------- inputs
def image_files(path) -> list[Path]:
    """A PNG file, or the PNGs of a folder in name order (the order sets each image's index)."""
    p = Path(str(path))
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() == ".png" and f.is_file())
        if not files:
            raise FileNotFoundError(f"edit.images {p} holds no .png files")
        return files
    if not p.is_file():
        raise FileNotFoundError(f"edit.images {p} not found (a PNG file or a folder of PNGs)")
    return [p]


def read_png(path, channels: int, what: str) -> torch.Tensor:
    """uint8 [C, H, W] of a PNG (grey for 1-channel tokenizers, RGB for 3)."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            import numpy as np
            a = torch.from_numpy(np.array(im, dtype=np.uint8))
    except (OSError, UnidentifiedImageError) as e:
        raise ValueError(f"{what} {path} is not a readable PNG ({e})") from None
    return a.unsqueeze(0) if a.dim() == 2 else a.permute(2, 0, 1).contiguous()


def read_images(path, channels: int) -> tuple[list[Path], torch.Tensor]:
    files = image_files(path)
    imgs = [read_png(f, channels, "edit.images") for f in files]
    h, w = imgs[0].shape[-2:]
    for f, im in zip(files, imgs):
        if tuple(im.shape[-2:]) != (h, w):
            raise ValueError(f"edit.images: {f} is {im.shape[-1]}x{im.shape[-2]} pixels but {files[0]} is {w}x{h}: "
                             f"all images of one run must have the same size")
    return files, torch.stack(imgs)


def parse_box(spec: str, h: int, w: int) -> tuple[int, int, int, int]:
    body = spec[len("box:"):]
    try:
        x0, y0, x1, y1 = (int(v) for v in body.split(","))
    except ValueError:
        raise ValueError(f"edit.mask {spec!r}: expected box:x0,y0,x1,y1 (four integers, pixels)") from None
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"edit.mask {spec!r}: the box must satisfy 0 <= x0 < x1 <= {w} and 0 <= y0 < y1 <= {h} "
                         f"(the image is {w}x{h} pixels; x1, y1 exclusive)")
    return x0, y0, x1, y1


def read_mask(spec, n: int, h: int, w: int) -> torch.Tensor:
    """Bool[n, h, w] pixels of the input image to regenerate: None (none: keep the whole image), `box:x0,y0,x1,y1`
    (x1, y1 exclusive) or a PNG of the image's size whose white pixels (>= 128 grey) are regenerated."""
    if spec is None:
        return torch.zeros(n, h, w, dtype=torch.bool)
    if not isinstance(spec, str):
        raise ValueError(f"edit.mask must be a PNG path or box:x0,y0,x1,y1, got {spec!r}")
    mask = torch.zeros(h, w, dtype=torch.bool)
    if spec.startswith("box:"):
        x0, y0, x1, y1 = parse_box(spec, h, w)
        mask[y0:y1, x0:x1] = True
    else:
        if not Path(spec).is_file():
            raise FileNotFoundError(f"edit.mask {spec} not found (a PNG whose white pixels are regenerated, or "
                                    f"box:x0,y0,x1,y1)")
        m = read_png(spec, 1, "edit.mask")[0]
        if tuple(m.shape) != (h, w):
            raise ValueError(f"edit.mask {spec} is {m.shape[1]}x{m.shape[0]} pixels but the images are {w}x{h}")
        mask = m >= 128
    return mask.expand(n, h, w).clone()


def read_labels(spec, n: int, num_classes: int) -> torch.Tensor:
    """One class for every image or one per image (edit.labels)."""
    if spec is None:
        raise ValueError(f"edit.labels is not set: give one class id (0..{num_classes - 1}) for all images or a "
                         f"list of one per image")
    vals = [spec] if isinstance(spec, (int, str)) else list(spec)
    try:
        if any(isinstance(v, (bool, float)) for v in vals):
            raise ValueError
        vals = [int(v) for v in vals]
    except (TypeError, ValueError):
        vals = []
    if not vals:
        raise ValueError(f"edit.labels must be a class id or a list of class ids, got {spec!r}")
    if len(vals) == 1:
        vals = vals * n
    if len(vals) != n:
        raise ValueError(f"edit.labels has {len(vals)} labels for {n} images: give one, or one per image")
    bad = [v for v in vals if not 0 <= v < num_classes]
    if bad:
        raise ValueError(f"edit.labels {bad[0]} is not a class id of this model (0..{num_classes - 1})")
    return torch.tensor(vals, dtype=torch.long)


# ------------------------------------------------------------------------------------------------------ canvas
def canvas_layout(hw: tuple[int, int], canvas=None, anchor=None, extend_left: int = 0,
                  extend_right: int = 0) -> tuple[tuple[int, int], tuple[int, int]]:
    """((H, W) of the output canvas, (top, left) of the image on it). canvas None: the image's own size (plus
    extend_left + extend_right pixels of width); anchor None or 'center': centred, else [top, left]."""
    h, w = hw
    left, right = int(extend_left), int(extend_right)
    if left < 0 or right < 0:
        raise ValueError(f"edit.extend_left / edit.extend_right must be >= 0 pixels, got {left} / {right}")
    if left or right:
        if canvas is not None or anchor is not None:
            raise ValueError("edit.extend_left / edit.extend_right set the canvas themselves: leave edit.canvas and "
                             "edit.anchor unset")
        return (h, w + left + right), (0, left)
    if canvas is None:
        if anchor is not None:
            raise ValueError("edit.anchor places the image on a larger canvas: set edit.canvas=[H,W] too")
        return (h, w), (0, 0)
    try:
        ch, cw = (int(v) for v in canvas)
    except (TypeError, ValueError):
        raise ValueError(f"edit.canvas must be [H, W] in pixels, got {canvas!r}") from None
    if ch < h or cw < w:
        raise ValueError(f"edit.canvas [{ch}, {cw}] is smaller than the {h}x{w} (HxW) image")
    if anchor is None or anchor == "center":
        return (ch, cw), ((ch - h) // 2, (cw - w) // 2)
    try:
        top, lft = (int(v) for v in anchor)
    except (TypeError, ValueError):
        raise ValueError(f"edit.anchor must be 'center' or [top, left] in pixels, got {anchor!r}") from None
    if not (0 <= top <= ch - h and 0 <= lft <= cw - w):
        raise ValueError(f"edit.anchor [{top}, {lft}] puts the {h}x{w} image outside the canvas [{ch}, {cw}]")
    return (ch, cw), (top, lft)


def place(images: torch.Tensor, mask: torch.Tensor, size: tuple[int, int], at: tuple[int, int]):
    """(uint8 canvas [N, C, H, W], Bool pixel mask [N, H, W]): the images at `at`, FILL and True elsewhere."""
    n, c, h, w = images.shape
    top, left = at
    canvas = torch.full((n, c, *size), FILL, dtype=torch.uint8)
    canvas[:, :, top:top + h, left:left + w] = images
    regen = torch.ones(n, *size, dtype=torch.bool)
    regen[:, top:top + h, left:left + w] = mask
    return canvas, regen


# -------------------------------------------------------------------------------------------------------- edit
def edit_size(fam, model, tok, size: tuple[int, int]):
    """The `size` argument of the family's edit/sample for a canvas of `size` pixels: None for the model's own grid
    (a family of one fixed grid refuses another canvas), else (H, W)."""
    if fam.sampling.shape is not None and fam.sampling.sizes is None:
        grid = tuple(int(v) for v in fam.sampling.shape(model))
        want = tuple(tok.latent_size(*size))
        if want == grid[:len(want)]:
            return None
        d = tok.downsample
        raise ValueError(f"family '{fam.name}' edits its fixed {grid[0]}x{grid[1]} token grid: the canvas must be "
                         f"{grid[0] * d}x{grid[1] * d} pixels (HxW), got {size[0]}x{size[1]}; outpaint by placing a "
                         f"smaller image on such a canvas (edit.canvas / edit.anchor)")
    return (int(size[0]), int(size[1]))


def to_unit(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [N, C, H, W] -> float [-1, 1] (the inverse of core.images.to_uint8 on the 256 levels)."""
    return images_u8.float() / 127.5 - 1.0


@torch.inference_mode()
def run_edit(model, fam, tok, settings, canvas_u8: torch.Tensor, regen: torch.Tensor, labels: torch.Tensor,
             generators, decode_batch: int = 0) -> dict:
    """{'images': uint8 [N, C, H, W], 'known', 'keep', 'codes'} of one batch: the family's edit of the tokenizer's
    codes of `canvas_u8`, keeping every code none of whose pixels is in `regen`."""
    from engine.generate import decode
    if fam.sampling is None or fam.sampling.edit is None:
        raise ValueError(f"family {fam.name} has no editing (its sampling sets no `edit`)")
    dev = tok.device
    known = tok.encode(to_unit(canvas_u8).to(dev))
    keep = ~tok.grid_mask(regen.to(dev))
    size = edit_size(fam, model, tok, tuple(canvas_u8.shape[-2:]))
    out = fam.sampling.edit(model, known, keep, labels.to(dev), generators, settings, size=size, tokenizer=tok)
    if isinstance(out, (list, tuple)):
        out = torch.stack(list(out))
    return {"images": to_uint8(decode(tok, out, decode_batch)).cpu(), "known": known, "keep": keep, "codes": out}
