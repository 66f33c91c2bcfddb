"""Frozen ViT backbones for the column tokenizer's training losses, in plain torch, with the parameter names of the
released weight files so that those files load strictly:

- DINO ViT-S/16 (`dino_deitsmall16_pretrain.pth`): the backbone of the release's DINO discriminator. Its blocks use
  the tanh GELU of the release's frozen copy (`FrozenDINOSmallNoDrop`), and `features` returns what its heads read:
  the token map right after the position embedding and after blocks 2, 5, 8, 11, each as patch tokens + the class
  token ("readout"), laid out (B, C, N). The final norm is loaded but, as released, not applied.
- DINOv2 ViT-B/14 (`dinov2_vitb14_pretrain.pth`, torch hub `dinov2_vitb14`): the semantic teacher; layer scale,
  exact GELU, `patch_tokens` = the final-normed patch tokens (the hub's `x_norm_patchtokens`).

Files are read only from local paths; a missing one is a one-line error naming it and its download address.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.loading import CheckpointError, load_file, load_strict

DINO_URL = "https://dl.fbaipublicfiles.com/dino/dino_deitsmall16_pretrain/dino_deitsmall16_pretrain.pth"
DINOV2_URL = "https://dl.fbaipublicfiles.com/dinov2/dinov2_vitb14/dinov2_vitb14_pretrain.pth"

# img_size is the size the position embedding was trained at (DINOv2: 518 = 37 patches of 14)
DINO_FLAVOURS = {
    "vit_small_16": dict(embed_dim=384, depth=12, num_heads=6, patch_size=16, img_size=224),
    "debug": dict(embed_dim=32, depth=4, num_heads=2, patch_size=4, img_size=16),
}
DINOV2_FLAVOURS = {
    "vit_base_14": dict(embed_dim=768, depth=12, num_heads=12, patch_size=14, img_size=518),
    "debug": dict(embed_dim=64, depth=2, num_heads=2, patch_size=2, img_size=8),
}


class PatchEmbed(nn.Module):
    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, approximate: str):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)
        self.approximate = approximate

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x), approximate=self.approximate))


class LayerScale(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x):
        return x * self.gamma


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, layer_scale: bool, approximate: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim, approximate)
        if layer_scale:
            self.ls1, self.ls2 = LayerScale(dim), LayerScale(dim)
        else:
            self.ls1 = self.ls2 = nn.Identity()

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class ViT(nn.Module):
    """cls token + patch tokens + learned absolute position embedding, pre-norm blocks, final norm; frozen, eval."""

    def __init__(self, embed_dim: int, depth: int, num_heads: int, patch_size: int, img_size: int,
                 layer_scale: bool = False, mask_token: bool = False, approximate: str = "none"):
        super().__init__()
        self.embed_dim, self.patch_size, self.img_size = embed_dim, patch_size, img_size
        self.grid = img_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, 3, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, embed_dim))
        if mask_token:  # DINOv2 files carry it (masked-image pretraining); unused here
            self.mask_token = nn.Parameter(torch.zeros(1, embed_dim))
        self.blocks = nn.ModuleList([Block(embed_dim, num_heads, layer_scale, approximate) for _ in range(depth)])
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.requires_grad_(False)
        self.eval()
        self._pos_cache: dict = {}

    def train(self, mode: bool = True):
        return super().train(False)  # no dropout anywhere, but keep the frozen module in eval whatever the caller does

    def pos_embed_for(self, gh: int, gw: int) -> torch.Tensor:
        """The position embedding resampled to a (gh, gw) patch grid: bicubic with antialiasing on the trained
        grid, the class token's entry unchanged (cached: the backbone is frozen)."""
        if (gh, gw) == (self.grid, self.grid):
            return self.pos_embed
        key = (gh, gw, self.pos_embed.device, self.pos_embed.dtype)
        if key not in self._pos_cache:
            cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
            grid = grid.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2).float()
            grid = F.interpolate(grid, size=(gh, gw), mode="bicubic", antialias=True, align_corners=False)
            grid = grid.permute(0, 2, 3, 1).reshape(1, gh * gw, -1).to(cls.dtype)
            self._pos_cache[key] = torch.cat([cls, grid], 1).detach()
        return self._pos_cache[key]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images (B, 3, H, W), H and W multiples of the patch size -> (B, 1 + N, C) before the blocks."""
        gh, gw = x.shape[-2] // self.patch_size, x.shape[-1] // self.patch_size
        t = self.patch_embed(x)
        return torch.cat([self.cls_token.expand(t.shape[0], -1, -1).to(t.dtype), t], 1) + self.pos_embed_for(gh, gw)

    def features(self, x: torch.Tensor, depths) -> list[torch.Tensor]:
        """Readouts (patch tokens + class token, (B, C, N)) after the position embedding and after each block index
        in `depths`; the blocks past the last index are not run."""
        depths = sorted(set(int(d) for d in depths))
        h = self.tokens(x)
        out = [(h[:, 1:] + h[:, :1]).transpose(1, 2)]
        for i, blk in enumerate(self.blocks[:depths[-1] + 1] if depths else []):
            h = blk(h)
            if i in depths:
                out.append((h[:, 1:] + h[:, :1]).transpose(1, 2))
        return out

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Final-normed patch tokens (B, N, C)."""
        h = self.tokens(x)
        for blk in self.blocks:
            h = blk(h)
        return self.norm(h)[:, 1:]


def build_dino(flavour: str = "vit_small_16") -> ViT:
    return ViT(**_flavour(DINO_FLAVOURS, flavour, "DINO"), approximate="tanh")


def build_dinov2(flavour: str = "vit_base_14") -> ViT:
    return ViT(**_flavour(DINOV2_FLAVOURS, flavour, "DINOv2"), layer_scale=True, mask_token=True)


def _flavour(table: dict, name: str, what: str) -> dict:
    if name not in table:
        raise ValueError(f"unknown {what} backbone flavour {name!r}; known: {', '.join(table)}")
    return table[name]


def require_file(path, what: str = "DINO ViT-S/16", url: str = DINO_URL) -> None:
    if not path or not Path(str(path)).is_file():
        raise FileNotFoundError(f"{what} weights not found: {path} (download {url} and give its local path)")


def _read(path, what: str, url: str) -> dict:
    require_file(path, what, url)
    obj = load_file(str(path), f"{what} weights")
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: expected a plain state dict of {what} tensors (the released backbone file)")
    return obj


def load_dino(path, flavour: str = "vit_small_16") -> ViT:
    """DINO ViT from a local file, strictly. The key bias of every qkv layer is zeroed, as the release does: it adds
    the same q.b_k to every logit of a query row, which the softmax cancels."""
    sd = _read(path, "DINO ViT-S/16", DINO_URL)
    net = build_dino(flavour)
    sd = dict(sd)
    for k in [k for k in sd if k.endswith(".attn.qkv.bias")]:
        b = sd[k].clone()
        c = b.numel() // 3
        b[c:2 * c] = 0
        sd[k] = b
    load_strict(net, sd, str(path))
    return net


def load_dinov2(path, flavour: str = "vit_base_14") -> ViT:
    """DINOv2 ViT from a local file (the torch hub `*_pretrain.pth` layout), strictly."""
    net = build_dinov2(flavour)
    load_strict(net, _read(path, "DINOv2 ViT-B/14", DINOV2_URL), str(path))
    return net

