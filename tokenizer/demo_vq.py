"""A small convolutional VQ autoencoder for the Fashion-MNIST demo (32x32, 1 channel, f4 -> 8x8 tokens).

Trained from scratch by the engine in a few CPU minutes, so the quantizer is chosen for robustness rather than size:
codes live on the unit sphere of a low-dimensional space (cosine-similarity lookup), the codebook follows an
exponential moving average of the vectors assigned to it (no codebook gradient), and codes that fall out of use are
restarted on encoder outputs of the current batch. Under torch.distributed the per-batch statistics are averaged
over ranks and restart vectors come from rank 0, so every rank holds the same codebook after every step.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

from core import dist
from core.loading import CheckpointError, load_file
from tokenizer.base import Tokenizer, load_strict, strip_prefixes

# flavour name -> constructor kwargs; 'demo' is the recommended Fashion-MNIST size (409k parameters; width 16 runs
# a training step several times faster than width 32 on a CPU, and steps matter most in a minutes budget);
# 'debug' is for tests
DEMO_VQ_FLAVOURS = {
    "demo": dict(ch=16, num_res=1, code_dim=16, codebook_size=512),
    "debug": dict(ch=8, num_res=1, code_dim=8, codebook_size=32),
}


def _norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(8, c), c, eps=1e-6)


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.norm1, self.conv1 = _norm(c), nn.Conv2d(c, c, 3, padding=1)
        self.norm2, self.conv2 = _norm(c), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class Encoder(nn.Module):
    def __init__(self, in_channels: int, ch: int, num_res: int, code_dim: int):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)
        # strided 4x4 convs halve the resolution; most blocks run at 8x8 where convs are cheap on a CPU
        self.down1 = nn.Conv2d(ch, 2 * ch, 4, stride=2, padding=1)
        self.res1 = nn.Sequential(*[ResBlock(2 * ch) for _ in range(num_res)])
        self.down2 = nn.Conv2d(2 * ch, 4 * ch, 4, stride=2, padding=1)
        self.res2 = nn.Sequential(*[ResBlock(4 * ch) for _ in range(num_res + 1)])
        self.norm_out = _norm(4 * ch)
        self.conv_out = nn.Conv2d(4 * ch, code_dim, 1)

    def forward(self, x):
        h = self.res1(self.down1(F.silu(self.conv_in(x))))
        h = self.res2(self.down2(h))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, out_channels: int, ch: int, num_res: int, code_dim: int):
        super().__init__()
        self.conv_in = nn.Conv2d(code_dim, 4 * ch, 3, padding=1)
        self.res2 = nn.Sequential(*[ResBlock(4 * ch) for _ in range(num_res + 1)])
        self.up2 = nn.Conv2d(4 * ch, 2 * ch, 3, padding=1)
        self.res1 = nn.Sequential(*[ResBlock(2 * ch) for _ in range(num_res)])
        self.up1 = nn.Conv2d(2 * ch, ch, 3, padding=1)
        self.norm_out = _norm(ch)
        self.conv_out = nn.Conv2d(ch, out_channels, 3, padding=1)

    def forward(self, z):
        h = self.res2(self.conv_in(z))
        h = self.res1(self.up2(F.interpolate(h, scale_factor=2.0, mode="nearest")))
        h = self.up1(F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.conv_out(F.silu(self.norm_out(h)))


class EMACosineQuantizer(nn.Module):
    """Nearest code by cosine similarity; codebook = normalised EMA of assigned vectors; dead-code restarts."""

    def __init__(self, codebook_size: int, code_dim: int, decay: float = 0.99, dead_fraction: float = 0.25,
                 beta: float = 0.25):
        super().__init__()
        self.codebook_size, self.code_dim = codebook_size, code_dim
        # a code is dead when its running usage falls below dead_fraction x the uniform share of a step's vectors
        self.decay, self.dead_fraction, self.beta = decay, dead_fraction, beta
        self.register_buffer("embed", F.normalize(torch.randn(codebook_size, code_dim), dim=1))
        # zero usage at start: the first training step restarts every unused code on a data vector (data init)
        self.register_buffer("cluster_size", torch.zeros(codebook_size))
        self.register_buffer("embed_sum", torch.zeros(codebook_size, code_dim))

    def lookup(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, d] (unit rows) -> code ids [N]."""
        return (z @ self.embed.t()).argmax(dim=1)

    @torch.no_grad()
    def _update(self, z: torch.Tensor, idx: torch.Tensor) -> None:
        counts = torch.bincount(idx, minlength=self.codebook_size).to(z.dtype)
        sums = torch.zeros_like(self.embed_sum).index_add_(0, idx, z)
        stats = dist.all_reduce_mean(torch.cat([counts[:, None], sums], dim=1))
        self.cluster_size.mul_(self.decay).add_(stats[:, 0], alpha=1 - self.decay)
        self.embed_sum.mul_(self.decay).add_(stats[:, 1:], alpha=1 - self.decay)
        # for unit vectors only the direction of the running sum matters, so no Laplace smoothing is needed
        used = self.embed_sum.norm(dim=1) > 1e-8
        self.embed[used] = F.normalize(self.embed_sum[used], dim=1)
        # the threshold comes from synced statistics, so every rank finds the same dead codes
        threshold = self.dead_fraction * float(stats[:, 0].sum()) / self.codebook_size
        dead = torch.nonzero(self.cluster_size < threshold).flatten()
        if dead.numel() == 0:
            return
        n = dead.numel()
        pick = torch.randint(0, z.shape[0], (n,), device=z.device) if dist.is_main() else None
        cand = z[pick].cpu() if pick is not None else None
        cand = dist.broadcast_object(cand).to(z.device)
        self.embed[dead] = cand
        self.cluster_size[dead] = 2.0 * threshold
        self.embed_sum[dead] = cand * (2.0 * threshold)

    def forward(self, z_e: torch.Tensor):
        """z_e [B, d, h, w] -> (z_q straight-through [B, d, h, w], commitment loss, codes [B, h, w])."""
        b, d, h, w = z_e.shape
        z = F.normalize(z_e.float().permute(0, 2, 3, 1).reshape(-1, d), dim=1)
        idx = self.lookup(z.detach())
        if self.training and torch.is_grad_enabled():
            self._update(z.detach(), idx)
            idx = self.lookup(z.detach())  # restarted codes may now be nearer
        z_q = self.embed[idx]
        loss = self.beta * F.mse_loss(z, z_q)
        z_q = z + (z_q - z).detach()
        z_q = z_q.reshape(b, h, w, d).permute(0, 3, 1, 2).to(z_e.dtype)
        return z_q, loss, idx.reshape(b, h, w)


class DemoVQ(nn.Module):
    """forward(images [B, C, 32, 32] in [-1, 1]) -> (recon, vq_loss, codes Long[B, 8, 8])."""

    downsample = 4

    def __init__(self, in_channels: int = 1, ch: int = 16, num_res: int = 1, code_dim: int = 16,
                 codebook_size: int = 512, beta: float = 0.25, decay: float = 0.99, dead_fraction: float = 0.25):
        super().__init__()
        self.in_channels, self.codebook_size = in_channels, codebook_size
        self.encoder = Encoder(in_channels, ch, num_res, code_dim)
        self.quantize = EMACosineQuantizer(codebook_size, code_dim, decay, dead_fraction, beta)
        self.decoder = Decoder(in_channels, ch, num_res, code_dim)

    def forward(self, images: torch.Tensor):
        z_q, vq_loss, codes = self.quantize(self.encoder(images))
        return self.decoder(z_q), vq_loss, codes

    def encode_codes(self, images: torch.Tensor) -> torch.Tensor:
        z = self.encoder(images)
        b, d, h, w = z.shape
        z = F.normalize(z.float().permute(0, 2, 3, 1).reshape(-1, d), dim=1)
        return self.quantize.lookup(z).reshape(b, h, w)

    def decode_codes(self, codes: torch.Tensor) -> torch.Tensor:
        z_q = self.quantize.embed[codes].permute(0, 3, 1, 2)
        return self.decoder(z_q.to(self.decoder.conv_in.weight.dtype))


def build_demo_vq(flavour: str = "demo", **overrides) -> DemoVQ:
    if flavour not in DEMO_VQ_FLAVOURS:
        raise KeyError(f"unknown demo_vq flavour {flavour!r}; known: {sorted(DEMO_VQ_FLAVOURS)}")
    return DemoVQ(**{**DEMO_VQ_FLAVOURS[flavour], **overrides})


# flavour name -> builder(**overrides), the form the engine's family record expects
FLAVOURS = {name: functools.partial(build_demo_vq, name) for name in DEMO_VQ_FLAVOURS}


def demo_vq_loss(model: nn.Module, images: torch.Tensor, l1_weight: float = 0.0):
    """(loss, logs): MSE (+ optional L1) reconstruction + commitment; model may be DDP-wrapped."""
    recon, vq_loss, codes = model(images)
    mse = F.mse_loss(recon.float(), images.float())
    loss = mse + vq_loss
    if l1_weight:
        loss = loss + l1_weight * F.l1_loss(recon.float(), images.float())
    with torch.no_grad():
        k = getattr(getattr(model, "module", model), "codebook_size")
        hist = torch.bincount(codes.flatten(), minlength=k).float()
        p = hist / hist.sum()
        perplexity = torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum())
        logs = {"mse": mse.item(), "vq": float(vq_loss), "psnr": (10 * torch.log10(4.0 / mse.clamp_min(1e-12))).item(),
                "usage": (hist > 0).float().mean().item(), "perplexity": perplexity.item()}
    return loss, logs


def demo_vq_training_loss(model: nn.Module, batch: dict, ctx=None):
    """Family.loss signature: batch {'image': Float[B,1,32,32] in [-1,1], 'label': Long[B]}."""
    return demo_vq_loss(model, batch["image"])


class DemoVQTokenizer(Tokenizer):
    kind = "discrete"

    def __init__(self, model: DemoVQ):
        super().__init__()
        self.model = model
        self.codebook_size = model.codebook_size
        self.in_channels = model.in_channels
        self.downsample = DemoVQ.downsample
        self.freeze()

    @classmethod
    def from_state_dict(cls, state_dict: dict, flavour: str = "demo", source: str = "demo_vq state dict",
                        **model_kwargs) -> "DemoVQTokenizer":
        model = build_demo_vq(flavour, **model_kwargs)
        load_strict(model, strip_prefixes(state_dict), source)
        return cls(model)

    @classmethod
    def from_checkpoint(cls, path: str, key: str | None = None, map_location="cpu",
                        **model_kwargs) -> "DemoVQTokenizer":
        """Engine checkpoint {model, ema, ..., flavour, config}; model kwargs from config['model'].

        key None prefers 'ema': the engine's EMA copies buffers from the live model at every update, so it pairs the
        averaged encoder/decoder with the current codebook (measured +0.5 dB test PSNR over 'model').
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"demo VQ checkpoint {path} not found; train it first with the demo recipe")
        ckpt = load_file(path, "a train.py checkpoint of family demo_vq ({model, ema, config, ...})")
        if key is None:
            key = "ema" if isinstance(ckpt, dict) and ckpt.get("ema") else "model"
        if not isinstance(ckpt, dict) or key not in ckpt:
            found = sorted(ckpt) if isinstance(ckpt, dict) else type(ckpt).__name__
            raise CheckpointError(f"{path}: expected a train.py checkpoint of family demo_vq with key "
                                          f"{key!r}, found {found}")
        cfg = ckpt.get("config") or {}
        mcfg = dict(cfg.get("model", {})) if isinstance(cfg, dict) else {}
        flavour = mcfg.pop("flavour", ckpt.get("flavour", "demo"))
        mcfg.pop("family", None)
        return cls.from_state_dict(ckpt[key], flavour=flavour, source=f"{path}[{key!r}]", **{**mcfg, **model_kwargs})

    def _encode(self, images):
        return self.model.encode_codes(images)

    def _decode(self, codes):
        return self.model.decode_codes(codes.long())
