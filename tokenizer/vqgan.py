"""The MAGE / MaskGIT VQGAN (f16, 1024 codes) used by AutoNAT and ENAT, with the parameter names of the released
`vqgan_jax_strongaug.ckpt` (taming `VQModel` layout, 168 tensors, 54,515,587 parameters).

Architecture facts that differ from the usual taming VQGAN (they follow the JAX MaskGIT tokenizer it was converted
from): no attention anywhere, bias-free 3x3 convs inside residual blocks and at the encoder input, parameter-free
2x2 average-pool downsampling, nearest-neighbour x2 upsampling followed by a 3x3 conv, GroupNorm(32, eps 1e-6) and
swish, no quant_conv / post_quant_conv. When a residual block changes width, its 1x1 `nin_shortcut` is applied to the
block's *output* (not its input) and added to it; the released shapes ([out, out, 1, 1]) require exactly that.

Pixel range: the official pipelines feed pixels in [0, 1] to the encoder and clamp decoder outputs to [0, 1].
`VQGANTokenizer` keeps the project interface ([-1, 1] on both sides) and converts at the boundary; `encode_unit`
takes [0, 1] pixels directly so feature extraction can reproduce the official arithmetic bit for bit.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from core.released import not_weights, read_released
from tokenizer.base import Tokenizer, load_strict, strip_prefixes

VQGAN_CONFIGS = {
    # vq-f16-jax (MAGE): the released tokenizer
    "mage": dict(ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256, n_embed=1024, in_channels=3),
    # debug size for tests and benchmarks (f4, 64 codes); channel counts stay multiples of 32 for GroupNorm(32)
    "tiny": dict(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=32, n_embed=64, in_channels=3),
}
DEFAULT_CKPT = os.path.join("assets", "vqgan_jax_strongaug.ckpt")
WEIGHTS_HELP = ("download vqgan_jax_strongaug.ckpt from the MAGE release (the Google Drive link under "
                "'Data Preparation' in the ENAT / AutoNAT README: "
                "https://drive.google.com/file/d/13S_unB87n6KKuuMdyMnyExW0G1kplTbP) and save it as "
                "assets/vqgan_jax_strongaug.ckpt, or pass its path (extract_imagenet_feature.py --vq_ckpt, "
                "train.py tokenizer.ckpt=)")


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6)


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _gn(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = _gn(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.nin_shortcut = (nn.Conv2d(out_channels, out_channels, 1, bias=False)
                             if in_channels != out_channels else None)

    def forward(self, x):
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            return h + self.nin_shortcut(h)
        return x + h


class _Level(nn.Module):
    """Holds `block` (and `upsample` in the decoder) so the state-dict names read down.{i}.block.{j}..."""

    def __init__(self, blocks: list[nn.Module], upsample: nn.Module | None = None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if upsample is not None:
            self.upsample = upsample


class _Mid(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block_1 = ResnetBlock(c, c)
        self.block_2 = ResnetBlock(c, c)

    def forward(self, x):
        return self.block_2(self.block_1(x))


class Upsample(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Encoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels, in_channels):
        super().__init__()
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1, bias=False)
        levels, c_in = [], ch
        for mult in ch_mult:
            c_out = ch * mult
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(c_in, c_out))
                c_in = c_out
            levels.append(_Level(blocks))
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(c_in)
        self.norm_out = _gn(c_in)
        self.conv_out = nn.Conv2d(c_in, z_channels, 1)

    def forward(self, x):
        h = self.conv_in(x)
        last = len(self.down) - 1
        for i, level in enumerate(self.down):
            for blk in level.block:
                h = blk(h)
            if i != last:
                h = F.avg_pool2d(h, 2, 2)
        h = self.mid(h)
        return self.conv_out(_swish(self.norm_out(h)))


class Decoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels, out_ch):
        super().__init__()
        c_in = ch * ch_mult[-1]
        self.conv_in = nn.Conv2d(z_channels, c_in, 3, padding=1)
        self.mid = _Mid(c_in)
        levels = [None] * len(ch_mult)
        for i in reversed(range(len(ch_mult))):
            c_out = ch * ch_mult[i]
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(c_in, c_out))
                c_in = c_out
            levels[i] = _Level(blocks, Upsample(c_out) if i != 0 else None)
        self.up = nn.ModuleList(levels)
        self.norm_out = _gn(c_in)
        self.conv_out = nn.Conv2d(c_in, out_ch, 3, padding=1)

    def forward(self, z):
        h = self.mid(self.conv_in(z))
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            for blk in level.block:
                h = blk(h)
            if i != 0:
                h = level.upsample(h)
        return self.conv_out(_swish(self.norm_out(h)))


class VectorQuantizer(nn.Module):
    """Plain L2 nearest neighbour over an unnormalised codebook (`quantize.embedding.weight`)."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        self.embedding = nn.Embedding(n_embed, embed_dim)

    def indices(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, d, h, w] -> Long [B, h, w]."""
        b, d, h, w = z.shape
        flat = z.permute(0, 2, 3, 1).reshape(-1, d).float()
        e = self.embedding.weight.float()
        dist = flat.pow(2).sum(1, keepdim=True) + e.pow(2).sum(1)[None] - 2.0 * flat @ e.t()
        return dist.argmin(dim=1).reshape(b, h, w)

    def lookup(self, idx: torch.Tensor) -> torch.Tensor:
        """Long [B, h, w] -> [B, d, h, w]."""
        return self.embedding(idx).permute(0, 3, 1, 2).contiguous()


class VQModel(nn.Module):
    def __init__(self, ch=128, ch_mult=(1, 1, 2, 2, 4), num_res_blocks=2, z_channels=256, n_embed=1024,
                 in_channels=3, out_ch=None):
        super().__init__()
        out_ch = in_channels if out_ch is None else out_ch
        self.encoder = Encoder(ch, tuple(ch_mult), num_res_blocks, z_channels, in_channels)
        self.decoder = Decoder(ch, tuple(ch_mult), num_res_blocks, z_channels, out_ch)
        self.quantize = VectorQuantizer(n_embed, z_channels)
        self.n_embed, self.in_channels = n_embed, in_channels
        self.downsample = 2 ** (len(ch_mult) - 1)

    def encode_indices(self, x01: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] pixels in [0, 1] -> Long [B, H/f, W/f]."""
        return self.quantize.indices(self.encoder(x01))

    def decode_quant(self, quant: torch.Tensor) -> torch.Tensor:
        """Quantized latent [B, z_channels, h, w] (codebook vectors, or any point of that space) -> images, nominally
        in [0, 1] (unclamped). There is no post_quant_conv: the latent goes straight into the decoder."""
        if quant.dim() != 4 or quant.shape[1] != self.quantize.embedding.embedding_dim:
            raise ValueError(f"decode_quant expects a latent [B, {self.quantize.embedding.embedding_dim}, h, w], "
                             f"got shape {tuple(quant.shape)}")
        # contiguous NCHW: a channels-last view (e.g. a permuted lookup) would pick other conv kernels and change
        # the last bits of the output
        return self.decoder(quant.to(self.decoder.conv_in.weight.dtype).contiguous())

    def decode_code(self, idx: torch.Tensor) -> torch.Tensor:
        """Long [B, h, w] -> images, nominally in [0, 1] (unclamped)."""
        return self.decode_quant(self.quantize.lookup(idx))


def build_vqmodel(config: str | dict = "mage") -> VQModel:
    if isinstance(config, str):
        if config not in VQGAN_CONFIGS:
            raise KeyError(f"unknown VQGAN config {config!r}; known: {sorted(VQGAN_CONFIGS)}")
        config = VQGAN_CONFIGS[config]
    return VQModel(**config)


def read_vqgan_state_dict(path: str) -> dict:
    """torch.load a VQGAN checkpoint that is the state dict itself or holds it under 'state_dict'."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VQGAN checkpoint not found: {path}; {WEIGHTS_HELP}")
    expected = "a VQGAN state dict (e.g. vqgan_jax_strongaug.ckpt, plain or under 'state_dict')"
    full = obj = read_released(path, expected)
    if isinstance(obj, dict) and "family" in obj and "model" in obj:
        raise ValueError(f"{path} is a train.py checkpoint of family '{obj['family']}', not a VQGAN checkpoint; "
                         f"expected {expected}")
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        found = f"a dict with keys {sorted(map(str, obj))[:6]}" if isinstance(obj, dict) else type(obj).__name__
        raise not_weights(path, full, expected) or ValueError(f"{path}: expected {expected}, found {found}")
    return strip_prefixes(obj)


class VQGANTokenizer(Tokenizer):
    kind = "discrete"

    def __init__(self, model: VQModel):
        super().__init__()
        self.model = model
        self.codebook_size = model.n_embed
        self.downsample = model.downsample
        self.in_channels = model.in_channels
        self.freeze()

    @classmethod
    def from_checkpoint(cls, path: str = DEFAULT_CKPT, config: str | dict = "mage",
                        map_location: str | torch.device = "cpu") -> "VQGANTokenizer":
        sd = read_vqgan_state_dict(path)
        model = build_vqmodel(config)
        load_strict(model, sd, f"{path} (expected VQGAN '{config if isinstance(config, str) else 'custom'}' weights)",
                    mapped=True)
        return cls(model).to(map_location)

    @torch.no_grad()
    def encode_unit(self, x01: torch.Tensor) -> torch.Tensor:
        """Official entry: pixels in [0, 1]."""
        self._check_images(x01)
        return self.model.encode_indices(x01)

    def _encode(self, images):
        return self.model.encode_indices((images + 1.0) * 0.5)

    def _decode(self, codes):
        return self.model.decode_code(codes.long()).clamp(0.0, 1.0) * 2.0 - 1.0

    @torch.no_grad()
    def decode_quant(self, quant: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] from the continuous quantized latent [B, z_channels, h, w] (e.g. codebook vectors mixed
        or interpolated in latent space); `decode(codes)` equals `decode_quant(codebook lookup of codes)`."""
        return (self.model.decode_quant(quant).clamp(0.0, 1.0) * 2.0 - 1.0).clamp_(-1.0, 1.0)

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """Long [B, h, w] -> the quantized latent [B, z_channels, h, w] that `decode_quant` takes."""
        return self.model.quantize.lookup(codes.long())


def load_vqgan(path: str = DEFAULT_CKPT, config: str | dict = "mage", device="cpu") -> VQGANTokenizer:
    return VQGANTokenizer.from_checkpoint(path, config, device)
