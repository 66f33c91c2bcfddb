"""The release's GAN discriminator (`DinoDisc`): a frozen DINO ViT-S/16 with five trainable heads, one per readout
(after the position embedding and after blocks 2, 5, 8, 11), behind `diff_augment`.

Per image x in [-1, 1]: augment -> ImageNet normalisation -> 224 x 224 (when both sides exceed 224: with probability
1/2 one random 224 crop for the batch, else area resampling; otherwise bicubic) -> DINO readouts (B, 384, 196) ->
each head: [spectral-norm Conv1d k1, BatchNormLocal, LeakyReLU 0.2], a residual [the same with k9, circular
padding] scaled by 1/sqrt(2), spectral-norm Conv1d to 1 channel -> the five logit rows concatenated, (B, 5 * 196).

State dict: only the heads (`heads.{i}.0.0.weight_orig`, `...weight_u`, `...weight_v`, `heads.{i}.0.1.weight`,
`heads.{i}.1.fn.0.*`, `heads.{i}.2.*`), as in the release, where the backbone sits in a tuple outside the module
tree; under `loss.discriminator.` these are the names the release's module gives them in its Lightning
checkpoints. The backbone here is shared (not copied) by deep copies such as the EMA model, and never receives
gradients.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from models.eqtok.diffaug import diff_augment
from models.eqtok.vit import ViT

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
KEY_DEPTHS = (2, 5, 8, 11)


class BatchNormLocal(nn.Module):
    """Batch norm over groups of `virtual_bs` images: statistics per channel over (images of the group, positions),
    biased variance, no running statistics (train and eval alike). ceil(B / virtual_bs) groups of equal size as the
    release; when B does not split evenly the groups are as equal as torch.tensor_split makes them."""

    def __init__(self, num_features: int, virtual_bs: int = 8, eps: float = 1e-6):
        super().__init__()
        self.virtual_bs, self.eps = virtual_bs, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))

    def forward(self, x):  # (B, C, L)
        groups = math.ceil(x.shape[0] / self.virtual_bs)
        out = []
        for g in torch.tensor_split(x.float(), groups, 0):
            mean = g.mean((0, 2), keepdim=True)
            var = g.var((0, 2), keepdim=True, unbiased=False)
            out.append((g - mean) / torch.sqrt(var + self.eps))
        return torch.cat(out, 0) * self.weight[None, :, None] + self.bias[None, :, None]


class ResidualBlock(nn.Module):
    def __init__(self, fn: nn.Module):
        super().__init__()
        self.fn = fn

    def forward(self, x):
        return (self.fn(x) + x) / math.sqrt(2)


class SpectralConv1d(nn.Module):
    """Conv1d with weight = weight_orig / sigma, sigma estimated by one power iteration per training forward on the
    buffers weight_u (out) and weight_v (in * k): the names of torch's hook-based spectral norm in the release's
    files. Written as a module (no weight attribute set by a hook) so that it deep-copies after a forward and works
    under torch.func.functional_call."""

    def __init__(self, cin: int, cout: int, k: int, eps: float = 1e-12):
        super().__init__()
        conv = nn.Conv1d(cin, cout, k)  # its default initialisation
        self.weight_orig = nn.Parameter(conv.weight.detach().clone())
        self.bias = nn.Parameter(conv.bias.detach().clone())
        self.register_buffer("weight_u", F.normalize(torch.randn(cout), dim=0, eps=eps))
        self.register_buffer("weight_v", F.normalize(torch.randn(cin * k), dim=0, eps=eps))
        self.k, self.eps = k, eps

    def weight(self) -> torch.Tensor:
        m = self.weight_orig.reshape(self.weight_orig.shape[0], -1)
        u, v = self.weight_u, self.weight_v
        if self.training:
            with torch.no_grad():
                v.copy_(F.normalize(m.T.float() @ u.float(), dim=0, eps=self.eps))
                u.copy_(F.normalize(m.float() @ v.float(), dim=0, eps=self.eps))
            u, v = u.clone(), v.clone()
        return self.weight_orig / torch.dot(u.to(m.dtype), m @ v.to(m.dtype))

    def forward(self, x):
        if self.k > 1:
            x = F.pad(x, (self.k // 2, self.k // 2), mode="circular")
        return F.conv1d(x, self.weight().to(x.dtype), self.bias.to(x.dtype))


def _conv1d(cin: int, cout: int, k: int, spectral: bool) -> nn.Module:
    if spectral:
        return SpectralConv1d(cin, cout, k)
    return nn.Conv1d(cin, cout, k, padding=k // 2, padding_mode="circular" if k > 1 else "zeros")


def _block(c: int, k: int, norm: str, eps: float, spectral: bool) -> nn.Sequential:
    if norm == "bn":
        n = BatchNormLocal(c, eps=eps)
    elif norm == "gn":
        n = nn.GroupNorm(32, c, eps=eps)
    else:
        raise ValueError(f"discriminator head norm must be bn or gn, got {norm!r}")
    return nn.Sequential(_conv1d(c, c, k, spectral), n, nn.LeakyReLU(0.2))


def make_heads(channels: int, n: int, kernel_size: int = 9, norm: str = "bn", eps: float = 1e-6,
               spectral: bool = True) -> nn.ModuleList:
    return nn.ModuleList([
        nn.Sequential(_block(channels, 1, norm, eps, spectral),
                      ResidualBlock(_block(channels, kernel_size, norm, eps, spectral)),
                      _conv1d(channels, 1, 1, spectral))
        for _ in range(n)])


class _Shared:
    """Holds the frozen backbone outside the module tree: not in state_dict(), not in parameters(), and shared
    rather than duplicated by copy.deepcopy (the EMA model)."""

    def __init__(self, module: nn.Module):
        self.module = module

    def __deepcopy__(self, memo):
        return self


def dino_input(x: torch.Tensor, size: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """[-1, 1] images -> ImageNet-normalised size x size images, as the release's frozen DINO prepares them."""
    mean = torch.tensor(IMAGENET_MEAN, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=x.device).view(1, 3, 1, 1)
    x = ((x.float() + 1) / 2 - mean) / std  # grey images broadcast to 3 channels
    h, w = x.shape[-2:]
    if h > size and w > size and float(torch.rand((), generator=generator)) <= 0.5:
        top = int(torch.randint(0, h - size + 1, (), generator=generator))
        left = int(torch.randint(0, w - size + 1, (), generator=generator))
        return x[..., top:top + size, left:left + size]
    if (h, w) == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="area" if h > size else "bicubic")


class DinoDiscriminator(nn.Module):
    def __init__(self, backbone: ViT, key_depths=KEY_DEPTHS, kernel_size: int = 9, norm: str = "bn",
                 spectral: bool = True, eps: float = 1e-6, aug_prob: float = 1.0, cutout: float = 0.2):
        super().__init__()
        self.key_depths = tuple(d for d in key_depths if d < len(backbone.blocks))
        self.aug_prob, self.cutout = float(aug_prob), float(cutout)
        backbone.requires_grad_(False)
        self._backbone = _Shared(backbone.eval())
        self.heads = make_heads(backbone.embed_dim, len(self.key_depths) + 1, kernel_size, norm, eps, spectral)

    @property
    def backbone(self) -> ViT:
        return self._backbone.module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> logits (B, 5 * N)."""
        net = self.backbone
        if net.pos_embed.device != x.device:
            net.to(x.device)
        x = diff_augment(x, self.aug_prob, self.cutout)
        acts = net.features(dino_input(x, net.img_size), self.key_depths)
        return torch.cat([head(a.float()).flatten(1) for head, a in zip(self.heads, acts)], 1)
