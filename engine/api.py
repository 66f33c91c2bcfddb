"""Python API: a generator and its tokenizer built as `--mode eval` builds them, for sampling, editing and the
tokenizer round trip, in one process (CPU or one GPU), without FID, output folders or torchrun.

    from engine.api import load_generator
    g = load_generator("configs/demo/nat_fmnist.yaml")            # or a recipe name: "nat_fmnist"
    imgs = g.sample(indices=range(8), seed=0)                     # uint8 (8, H, W, 3): eval's PNGs 0..7
    out = g.edit(imgs, "box:8,8,24,24", labels=3, seed=1)         # regenerate the centre as class 3
    rec = g.decode(g.encode(imgs))                                # the tokenizer's reconstruction

Sample i: `g.sample(labels, indices=idx, seed=s)` row k draws from generator (s, idx[k]) (core.seeding), as the
eval of a run with `seed=s` draws sample idx[k]; with labels None the labels are eval's (eval.labels: balanced
i mod classes, or random from (s, i)). Row k is therefore the PNG `<idx[k]:06d>.png` that `--mode eval seed=s`
writes, byte for byte when the batch equals one eval unit (the same rows in one call, eval.batch_size of them):
matrix products over another batch size may round differently (README, Training). indices default to 0..B-1.
"""
from __future__ import annotations

from pathlib import Path

import torch

from core.seeding import row_generators
from engine import editing

ROOT = Path(__file__).resolve().parent.parent


def recipe_path(config) -> str:
    """A YAML path, or a recipe name found as configs/<name>.yaml, configs/demo/<name>.yaml or
    configs/debug/<name>.yaml."""
    p = Path(str(config))
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise FileNotFoundError(f"config {p} not found")
        return str(p)
    for folder in ("configs", "configs/demo", "configs/debug"):
        q = ROOT / folder / f"{p.name}.yaml"
        if q.is_file():
            return str(q)
    raise FileNotFoundError(f"no recipe named {config!r} in configs/, configs/demo/ or configs/debug/ (give a YAML "
                            f"path)")


def resolve_device(device) -> torch.device:
    d = str(device)
    if d == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if d.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={d} but no CUDA device is available; use device='cpu' or 'auto'")
    return torch.device(d)


def load_generator(config, checkpoint=None, device="auto", **overrides) -> "Generator":
    """The generator of `config` (a recipe YAML path or name) with the weights `checkpoint` (ours or official;
    None: eval.pretrained_path, else the latest checkpoint in output_dir), and its tokenizer. `overrides`: config
    keys, dotted names through a dict: load_generator(cfg, **{"tokenizer.ckpt": "vq.pt", "sample.gen_steps": 4})."""
    from engine.config import load_config
    from engine.generate import build_generator, build_tokenizer
    keys = dict(overrides)
    if checkpoint is not None:
        keys["eval.pretrained_path"] = str(checkpoint)
    keys["device"] = str(device)
    cfg = load_config(recipe_path(config), flags=keys, mode="eval")
    from models import get_family
    fam = get_family(cfg.family)
    if fam.sampling is None:
        raise ValueError(f"family '{fam.name}' has no sampler: it cannot be loaded as a generator")
    if fam.check_config is not None:
        fam.check_config(cfg, "eval")
    dev = resolve_device(cfg.device)
    tok = build_tokenizer(cfg, dev)
    model, fam = build_generator(cfg, dev)
    return Generator(cfg, model, fam, tok, dev)


def _as_u8_nchw(images, channels: int) -> torch.Tensor:
    """uint8 (B, H, W, C) / (B, H, W) (what `sample` returns, C 1 or 3), or a float (B, C, H, W) in [-1, 1]."""
    x = torch.as_tensor(images)
    if x.dtype == torch.uint8:
        if x.dim() == 3:
            x = x.unsqueeze(-1)
        if x.dim() != 4:
            raise ValueError(f"uint8 images must be (B, H, W, C) or (B, H, W), got shape {tuple(x.shape)}")
        x = x.permute(0, 3, 1, 2)
    else:
        if x.dim() != 4:
            raise ValueError(f"float images must be (B, C, H, W) in [-1, 1], got shape {tuple(x.shape)}")
        from core.images import to_uint8
        x = to_uint8(x)
    if x.shape[1] == channels:
        return x.contiguous()
    if channels == 1 and x.shape[1] == 3:  # RGB of a grey image (this API's own output): ITU-R 601 luma as PIL
        r, g, b = x.float().unbind(1)
        return ((r * 299 + g * 587 + b * 114 + 500) // 1000).to(torch.uint8).unsqueeze(1)
    if channels == 3 and x.shape[1] == 1:
        return x.expand(-1, 3, -1, -1).contiguous()
    raise ValueError(f"images have {x.shape[1]} channels; the tokenizer takes {channels}")


def _hwc3(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 [B, C, H, W] -> (B, H, W, 3), a grey image repeated in R, G, B (as PIL's convert('RGB'))."""
    x = images_u8.expand(-1, 3, -1, -1) if images_u8.shape[1] == 1 else images_u8
    return x.permute(0, 2, 3, 1).contiguous()


class Generator:
    """A loaded generator (`model`, `family`), its `tokenizer` and config `cfg`, on `device`."""

    def __init__(self, cfg, model, fam, tok, device):
        self.cfg, self.model, self.family, self.tokenizer, self.device = cfg, model, fam, tok, device
        self.num_classes = fam.sampling.num_classes(model, cfg) if fam.sampling.num_classes is not None else int(cfg.data.num_classes)

    # ------------------------------------------------------------------------------------------------ settings
    def settings(self, **sample_keys):
        """The family's sampler settings from the config's `sample:` section with these keys replaced."""
        from omegaconf import OmegaConf
        if not sample_keys:
            return self.family.sampling.settings(self.cfg, self.model)
        cfg = OmegaConf.create(OmegaConf.to_container(self.cfg, resolve=True))
        for k, v in sample_keys.items():
            if k not in cfg.sample:
                raise ValueError(f"unknown sampler setting {k!r}: the sample section of family '{self.family.name}' "
                                 f"has {', '.join(cfg.sample)}")
            cfg.sample[k] = v
        OmegaConf.set_struct(cfg, True)
        return self.family.sampling.settings(cfg, self.model)

    def eval_labels(self, indices, seed: int) -> torch.Tensor:
        from engine.evaluate import eval_labels
        return eval_labels(self.cfg, list(indices), self.num_classes, seed)

    def _rows(self, labels, indices, seed: int):
        if indices is None:
            if labels is None:
                raise ValueError("give labels or indices")
            indices = range(len(torch.as_tensor(labels).reshape(-1)))
        indices = [int(i) for i in indices]
        labels = self.eval_labels(indices, seed) if labels is None else \
            torch.as_tensor(labels, dtype=torch.long).reshape(-1)
        if len(labels) != len(indices):
            raise ValueError(f"{len(labels)} labels for {len(indices)} indices")
        return labels, indices

    # --------------------------------------------------------------------------------------------- generation
    @torch.inference_mode()
    def sample(self, labels=None, size=None, seed: int = 0, indices=None, **sample_keys) -> torch.Tensor:
        """uint8 (B, H, W, 3): row k from generator (seed, indices[k]) and labels[k] alone (see the module doc).
        size (H, W): for families that sample any size; `sample_keys`: keys of the config's sample section."""
        from engine.generate import decode, generate
        from engine.precision import autocast
        from core.images import to_uint8
        labels, indices = self._rows(labels, indices, seed)
        size = None if size is None else (int(size[0]), int(size[1]))
        with autocast(self.device, str(self.cfg.eval.precision)):
            out, _ = generate(self.model, self.family, self.settings(**sample_keys), labels.to(self.device), indices,
                              int(seed), size=size)
        if isinstance(out, (list, tuple)):
            out = torch.stack(list(out))
        return _hwc3(to_uint8(decode(self.tokenizer, out, int(self.cfg.eval.decode_batch))).cpu())

    @torch.inference_mode()
    def edit(self, images, mask=None, labels=None, seed: int = 0, canvas=None, anchor=None, extend_left: int = 0,
             extend_right: int = 0, indices=None, return_codes: bool = False, **sample_keys):
        """uint8 (B, H, W, 3) of the canvas with the masked pixels regenerated under `labels` (one or one per image).

        images: uint8 (B, h, w, C) / (B, h, w) or float (B, C, h, w) in [-1, 1]. mask: None (keep all: the
        reconstruction), 'box:x0,y0,x1,y1' (pixels of the image, x1/y1 exclusive), a PNG path (white =
        regenerate) or a Bool (B, h, w) / (h, w) tensor. canvas (H, W) >= (h, w) with anchor 'center' or
        (top, left), or extend_left / extend_right pixels of width: the canvas outside the image is generated.
        Row k draws from generator (seed, indices[k]) (indices default 0..B-1), as `--mode edit` does for image k.
        return_codes: also {'known', 'keep', 'codes'} (the tokenizer's codes of the canvas, the kept grid, the
        family's output)."""
        tok = self.tokenizer
        x = _as_u8_nchw(images, tok.in_channels)
        n, _, h, w = x.shape
        if isinstance(mask, torch.Tensor):
            m = mask.bool()
            m = m.expand(n, h, w) if m.dim() == 2 else m
            if tuple(m.shape) != (n, h, w):
                raise ValueError(f"mask must be Bool (B, H, W) = ({n}, {h}, {w}), got {tuple(mask.shape)}")
            m = m.cpu()
        else:
            m = editing.read_mask(mask, n, h, w)
        if labels is None:
            raise ValueError("edit needs labels: one class id or one per image")
        lab = editing.read_labels(labels.tolist() if isinstance(labels, torch.Tensor) else labels, n,
                                  self.num_classes)
        indices = list(range(n)) if indices is None else [int(i) for i in indices]
        if len(indices) != n:
            raise ValueError(f"{len(indices)} indices for {n} images")
        size, at = editing.canvas_layout((h, w), canvas, anchor, extend_left, extend_right)
        canvas_u8, regen = editing.place(x.cpu(), m, size, at)
        from engine.precision import autocast
        with autocast(self.device, str(self.cfg.eval.precision)):
            res = editing.run_edit(self.model, self.family, tok, self.settings(**sample_keys), canvas_u8, regen, lab,
                                   row_generators(int(seed), indices), int(self.cfg.eval.decode_batch))
        out = _hwc3(res.pop("images"))
        return (out, res) if return_codes else out

    # ---------------------------------------------------------------------------------------------- tokenizer
    @torch.inference_mode()
    def encode(self, images) -> torch.Tensor:
        """The tokenizer's codes (or latents) of uint8 (B, H, W, C) / float (B, C, H, W) images."""
        x = _as_u8_nchw(images, self.tokenizer.in_channels)
        return self.tokenizer.encode(editing.to_unit(x).to(self.tokenizer.device))

    @torch.inference_mode()
    def decode(self, codes) -> torch.Tensor:
        """uint8 (B, H, W, 3) images of codes or latents."""
        from engine.generate import decode
        from core.images import to_uint8
        return _hwc3(to_uint8(decode(self.tokenizer, codes, int(self.cfg.eval.decode_batch))).cpu())

    def grid_mask(self, pixel_mask: torch.Tensor) -> torch.Tensor:
        """The tokenizer's code grid of a Bool (B, H, W) pixel mask (True: the code is regenerated)."""
        return self.tokenizer.grid_mask(pixel_mask.to(self.tokenizer.device))
