"""The column-wise 1-D tokenizer of Equivariant Image Modeling: every 16-pixel-wide image column becomes one 256-d
continuous token, with the parameter names of the released Lightning `tokenizer.ckpt` (400 module tensors).

Architecture (official config): an LDM-style conv autoencoder (ch 128, ch_mult [1, 1, 2, 4, 4], 2 ResNet blocks per
encoder level, 3 per decoder level, GroupNorm(32, eps 1e-6), swish), every 3x3 conv with reflect padding, global
self-attention over all H*W positions at the lowest resolution, and pixel-(un)shuffle resampling with a
parameter-free residual shortcut. The 2-D latent (B, 256, 16, W/16) is cut into columns: channel-major
(index c*16 + h) vectors of 4096 values, then two k=3 Conv1d layers over the column axis (`encoder.encoder1d`,
`quant_layer`) give the posterior mean (B, 256, L). The decoder mirrors this (`post_quant_layer`,
`decoder.decoder1d`, reshape back to (B, 256, 16, L)). A `semantic_decoder` (loss only) reads the decoder feature
map at the lowest resolution. Width is fully convolutional (16*L pixels <-> L tokens, L >= 2 because reflect
padding needs two columns); the height is fixed by the config (256 official).

The posterior has no variance: the mean is the latent; `gaussian_sample` adds noise whose scale is drawn once per
image (s ~ clamp(N(0, (2.5/0.8)^2), +-2.5)), which is also how the generator's training targets are made.
"""
from __future__ import annotations

import logging
import os

import torch
import torch.nn.functional as F
from torch import nn

from core.released import not_weights, read_released
from tokenizer.base import CheckpointMismatchError, Tokenizer, load_strict, strip_prefixes

log = logging.getLogger(__name__)

COLUMN_CONFIGS = {
    # configs/second_stage/tokenizer_config.yaml
    # semantic_num_res_blocks counts the blocks a semantic level RUNS; it builds one more (see SemanticDecoder)
    "official": dict(ch=128, ch_mult=(1, 1, 2, 4, 4), num_res_blocks=2, z_channels=256, embed_dim=256,
                     resolution=256, in_channels=3, semantic_channels=(768, 768), semantic_num_res_blocks=2),
    # tests: f4, 16-pixel-high images, 4-pixel columns, 16-d tokens; widths stay multiples of 32 for GroupNorm(32)
    "debug": dict(ch=32, ch_mult=(1, 1, 2), num_res_blocks=1, z_channels=32, embed_dim=16, resolution=16,
                  in_channels=3, semantic_channels=(64,), semantic_num_res_blocks=1),
    # Fashion-MNIST demo: 32-pixel-high grey images, 4-pixel columns (8 tokens per 32 px), 16-d tokens; no ResNet
    # blocks in the encoder levels (one per decoder level) so that a CPU trains it in minutes
    "fmnist": dict(ch=32, ch_mult=(1, 1, 1), num_res_blocks=0, z_channels=32, embed_dim=16, resolution=32,
                   in_channels=1, semantic_channels=(32,), semantic_num_res_blocks=1),
}
POSTERIOR_STD = 2.5
VAE_NORM = 0.05493  # generator latents = posterior.sample() * VAE_NORM (latent std ~ 1)
EMA_MODULES = ("encoder", "decoder", "semantic_decoder", "quant_layer", "post_quant_layer")
DEFAULT_CKPT = os.path.join("assets", "equ_tokenizer.ckpt")
WEIGHTS_HELP = ("download pretrained_models/tokenizer.ckpt from the Hugging Face repo UmiSonoda16/EquivariantModeling "
                "and save it as assets/equ_tokenizer.ckpt, or pass its path")


def _gn(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c, eps=1e-6)


def _conv3(cin: int, cout: int) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, padding=1, padding_mode="reflect")


def _swish(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = _gn(in_channels)
        self.conv1 = _conv3(in_channels, out_channels)
        self.norm2 = _gn(out_channels)
        self.conv2 = _conv3(out_channels, out_channels)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x):
        h = self.conv1(_swish(self.norm1(x)))
        h = self.conv2(_swish(self.norm2(h)))
        if self.nin_shortcut is not None:
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over every spatial position (global, not windowed)."""

    def __init__(self, c: int):
        super().__init__()
        self.norm = _gn(c)
        self.q = nn.Conv2d(c, c, 1)
        self.k = nn.Conv2d(c, c, 1)
        self.v = nn.Conv2d(c, c, 1)
        self.proj_out = nn.Conv2d(c, c, 1)

    def forward(self, x):
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (m(y).reshape(b, 1, c, h * w).transpose(-1, -2) for m in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # scale c^-0.5
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class _ConvHolder(nn.Module):
    """Only there so the resampler weights are named `<...>sample.conv.conv.weight` as in the release."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv = _conv3(cin, cout)

    def forward(self, x):
        return self.conv(x)


class DownsampleShuffleResidual(nn.Module):
    """conv to c/4 channels then pixel-unshuffle (x2), plus a shortcut: pixel-unshuffle and average channel groups
    (for equal in/out widths this is a 2x2 average pool)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        if cout % 4 or (4 * cin) % cout:
            raise ValueError(f"shuffle downsampling {cin}->{cout} needs cout % 4 == 0 and 4*cin % cout == 0")
        self.cout = cout
        self.conv = _ConvHolder(cin, cout // 4)

    def forward(self, x):
        h = F.pixel_unshuffle(self.conv(x), 2)
        s = F.pixel_unshuffle(x, 2)
        b, c4, hh, ww = s.shape
        s = s.reshape(b, self.cout, c4 // self.cout, hh, ww).mean(2)
        return h + s


class UpsampleShuffleResidual(nn.Module):
    """conv to 4c channels then pixel-shuffle (x2), plus a shortcut: repeat every channel, then pixel-shuffle
    (for equal in/out widths this is nearest-neighbour upsampling)."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        if (4 * cout) % cin:
            raise ValueError(f"shuffle upsampling {cin}->{cout} needs 4*cout % cin == 0")
        self.repeats = 4 * cout // cin
        self.conv = _ConvHolder(cin, 4 * cout)

    def forward(self, x):
        h = F.pixel_shuffle(self.conv(x), 2)
        s = F.pixel_shuffle(x.repeat_interleave(self.repeats, dim=1), 2)
        return h + s


class _Level(nn.Module):
    def __init__(self, blocks, attns=None, resample: tuple[str, nn.Module] | None = None):
        super().__init__()
        self.block = nn.ModuleList(blocks)
        if attns:
            self.attn = nn.ModuleList(attns)
        if resample is not None:
            setattr(self, resample[0], resample[1])

    def run(self, h):
        attn = getattr(self, "attn", None)
        for i, blk in enumerate(self.block):
            h = blk(h)
            if attn is not None:
                h = attn[i](h)
        return h


class _Mid(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.block_1 = ResnetBlock(c, c)
        self.attn_1 = AttnBlock(c)
        self.block_2 = ResnetBlock(c, c)

    def forward(self, x):
        return self.block_2(self.attn_1(self.block_1(x)))


def columnize(z: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, C*H, W): one channel-major vector (index c*H + h) per column."""
    b, c, h, w = z.shape
    return z.permute(0, 3, 1, 2).reshape(b, w, c * h).transpose(1, 2)


def rasterize(cols: torch.Tensor, channels: int) -> torch.Tensor:
    """Inverse of columnize: (B, C*H, W) -> (B, C, H, W)."""
    b, ch, w = cols.shape
    return cols.transpose(1, 2).reshape(b, w, channels, ch // channels).permute(0, 2, 3, 1)


def _conv1d(cin: int, cout: int) -> nn.Conv1d:
    return nn.Conv1d(cin, cout, 3, padding=1, padding_mode="reflect")


class Encoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels, in_channels, post_channels):
        super().__init__()
        self.conv_in = _conv3(in_channels, ch)
        levels, c_in, last = [], ch, len(ch_mult) - 1
        for i, mult in enumerate(ch_mult):
            c_out = ch * mult
            blocks = []
            for _ in range(num_res_blocks):
                blocks.append(ResnetBlock(c_in, c_out))
                c_in = c_out
            attns = [AttnBlock(c_out) for _ in range(num_res_blocks)] if i == last else None
            resample = ("downsample", DownsampleShuffleResidual(c_out, c_out)) if i != last else None
            levels.append(_Level(blocks, attns, resample))
        self.down = nn.ModuleList(levels)
        self.mid = _Mid(c_in)
        self.norm_out = _gn(c_in)
        self.conv_out = _conv3(c_in, z_channels)
        self.encoder1d = _conv1d(post_channels, post_channels)

    def forward(self, x):
        h = self.conv_in(x)
        for level in self.down:
            h = level.run(h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.conv_out(_swish(self.norm_out(self.mid(h))))
        return self.encoder1d(columnize(h))


class Decoder(nn.Module):
    def __init__(self, ch, ch_mult, num_res_blocks, z_channels, out_ch, post_channels):
        super().__init__()
        self.z_channels = z_channels
        self.decoder1d = _conv1d(post_channels, post_channels)
        c_in = ch * ch_mult[-1]
        self.conv_in = _conv3(z_channels, c_in)
        self.mid = _Mid(c_in)
        last = len(ch_mult) - 1
        levels = [None] * len(ch_mult)
        for i in reversed(range(len(ch_mult))):
            c_out = ch * ch_mult[i]
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(c_in, c_out))
                c_in = c_out
            attns = [AttnBlock(c_out) for _ in range(num_res_blocks + 1)] if i == last else None
            resample = ("upsample", UpsampleShuffleResidual(c_out, c_out)) if i != 0 else None
            levels[i] = _Level(blocks, attns, resample)
        self.up = nn.ModuleList(levels)
        self.norm_out = _gn(c_in)
        self.conv_out = _conv3(c_in, out_ch)

    def forward(self, cols, semantic: bool = False):
        """cols (B, post_channels, L) -> images, and the lowest-resolution feature map if `semantic`."""
        h = self.mid(self.conv_in(rasterize(self.decoder1d(cols), self.z_channels)))
        feat = None
        for i in reversed(range(len(self.up))):
            level = self.up[i]
            h = level.run(h)
            if i == len(self.up) - 1:
                feat = h  # the semantic decoder's input: after the lowest level's blocks, before upsampling
            if i != 0:
                h = level.upsample(h)
        img = self.conv_out(_swish(self.norm_out(h)))
        return (img, feat) if semantic else img


class SemanticDecoder(nn.Module):
    """ResNet blocks at the lowest resolution regressing DINOv2 patch features (training signal only).

    Like the official module, every level builds `num_res_blocks + 1` ResNet blocks but runs only the first
    `num_res_blocks`: the last block of each level is in the released state dict (so the file loads strictly) and
    never touches the output. Running it would change `decode(..., semantic=True)` and the semantic loss of the
    released weights. (The pixel decoder's levels run all of their `num_res_blocks + 1` blocks.)"""

    def __init__(self, in_channels, channels, num_res_blocks):
        super().__init__()
        if isinstance(num_res_blocks, bool) or not isinstance(num_res_blocks, int) or num_res_blocks < 1:
            raise ValueError(f"model.semantic_num_res_blocks (semantic ResNet blocks run per level) must be an "
                             f"integer >= 1, got {num_res_blocks!r}")
        self.num_res_blocks = num_res_blocks
        levels, c_in = [], in_channels
        for c_out in channels:
            blocks = []
            for _ in range(num_res_blocks + 1):
                blocks.append(ResnetBlock(c_in, c_out))
                c_in = c_out
            levels.append(_Level(blocks))
        self.down = nn.ModuleList(levels)
        self.norm_out = _gn(c_in)
        self.conv_out = _conv3(c_in, c_in)

    def forward(self, h):
        for level in self.down:
            for blk in level.block[:self.num_res_blocks]:  # the extra block stays idle, as in the release
                h = blk(h)
        return self.conv_out(_swish(self.norm_out(h)))


def gaussian_sample(mean: torch.Tensor, std: float = POSTERIOR_STD,
                    generator: torch.Generator | None = None) -> torch.Tensor:
    """mean + s*eps with one s ~ clamp(N(0, (std/0.8)^2), -std, std) per image (dim 0) and eps ~ N(0, I).

    Draws from `generator` (on the CPU, so results do not depend on the device): B scales first, then eps.
    """
    b = mean.shape[0]
    s = (torch.randn(b, generator=generator) * (std / 0.8)).clamp_(-std, std)
    eps = torch.randn(mean.shape, generator=generator)
    s = s.reshape(b, *([1] * (mean.dim() - 1))).to(mean.device, mean.dtype)
    return mean + s * eps.to(mean.device, mean.dtype)


def l2_penalty(mean: torch.Tensor) -> torch.Tensor:
    """The posterior's "KL": 0.5 * sum of mean^2 per image -> (B,)."""
    return 0.5 * mean.pow(2).flatten(1).sum(1)


class ColumnAutoencoder(nn.Module):
    """The official module tree: encoder, decoder, semantic_decoder, quant_layer, post_quant_layer."""

    def __init__(self, ch=128, ch_mult=(1, 1, 2, 4, 4), num_res_blocks=2, z_channels=256, embed_dim=256,
                 resolution=256, in_channels=3, out_ch=None, semantic_channels=(768, 768),
                 semantic_num_res_blocks=2):
        super().__init__()
        ch_mult = tuple(ch_mult)
        self.downsample = 2 ** (len(ch_mult) - 1)
        if resolution % self.downsample:
            raise ValueError(f"image height {resolution} is not divisible by the downsampling factor {self.downsample}")
        self.resolution, self.embed_dim, self.in_channels = resolution, embed_dim, in_channels
        post = z_channels * (resolution // self.downsample)
        self.post_channels = post
        self.encoder = Encoder(ch, ch_mult, num_res_blocks, z_channels, in_channels, post)
        self.decoder = Decoder(ch, ch_mult, num_res_blocks, z_channels, out_ch or in_channels, post)
        self.semantic_decoder = SemanticDecoder(ch * ch_mult[-1], tuple(semantic_channels), semantic_num_res_blocks)
        self.quant_layer = _conv1d(post, embed_dim)
        self.post_quant_layer = _conv1d(embed_dim, post)

    def encode_mean(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, C, resolution, 16*L) in [-1, 1] -> posterior mean (B, L, embed_dim)."""
        return self.quant_layer(self.encoder(images)).transpose(1, 2)

    def decode(self, tokens: torch.Tensor, semantic: bool = False):
        """tokens (B, L, embed_dim) -> images (B, C, resolution, 16*L), plus semantic features if asked."""
        cols = self.post_quant_layer(tokens.transpose(1, 2).to(self.post_quant_layer.weight.dtype))
        if not semantic:
            return self.decoder(cols)
        img, feat = self.decoder(cols, semantic=True)
        return img, self.semantic_decoder(feat)


def build_column_autoencoder(config: str | dict = "official") -> ColumnAutoencoder:
    if isinstance(config, str):
        if config not in COLUMN_CONFIGS:
            raise KeyError(f"unknown column tokenizer config {config!r}; known: {sorted(COLUMN_CONFIGS)}")
        config = COLUMN_CONFIGS[config]
    return ColumnAutoencoder(**config)


# ---------------------------------------------------------------------------------------------- Lightning files
def ema_buffer_name(module: str, param_path: str) -> str:
    """LitEma naming: `ema_<module>.<param path without dots>`."""
    return f"ema_{module}.{param_path.replace('.', '')}"


def module_state_from_lightning(state_dict: dict, model: ColumnAutoencoder, use_ema: bool = True,
                                source: str = "checkpoint") -> dict:
    """The 400 module tensors of a Lightning `state_dict`: EMA shadows mapped back onto module names (default, what
    the official inference path uses) or the live weights. `loss.*` entries are dropped with a one-line count;
    anything else unaccounted for, missing or mis-shaped raises CheckpointMismatchError naming the keys."""
    sd = strip_prefixes(state_dict)
    n_loss = sum(1 for k in sd if k.startswith("loss."))
    if n_loss:
        log.info("%s: ignoring %d loss.* entries (training losses, not part of the tokenizer)", source, n_loss)
    own = model.state_dict()
    expected_ema = set()
    ema_of = {}
    for m in EMA_MODULES:
        expected_ema |= {f"ema_{m}.decay", f"ema_{m}.num_updates"}
        for name, _ in getattr(model, m).named_parameters():
            key = ema_buffer_name(m, name)
            if key in ema_of:
                raise ValueError(f"EMA names collide once dots are removed: {ema_of[key]} and {m}.{name}")
            ema_of[key] = f"{m}.{name}"
    expected_ema |= set(ema_of)
    present = {k for k in sd if not k.startswith("loss.")}
    live = {k for k in present if not k.startswith("ema_")}
    emas = present - live
    missing = sorted(set(own) - live) + sorted(expected_ema - emas if use_ema else set())
    unexpected = sorted((live - set(own)) | (emas - expected_ema))
    if missing or unexpected:
        def _fmt(title, items):  # one line: the entry points print the message as their one `error:` line
            if not items:
                return ""
            return f"; {len(items)} {title}: " + ", ".join(items[:5]) + (f", ... ({len(items)} in all)"
                                                                         if len(items) > 5 else "")
        raise CheckpointMismatchError(f"{source} does not match the column tokenizer "
                                      f"({'EMA' if use_ema else 'live'} weights)"
                                      + _fmt("missing key(s)", missing) + _fmt("unexpected key(s)", unexpected))
    out = {k: sd[k] for k in own}
    if use_ema:
        for key, name in ema_of.items():
            out[name] = sd[key]
    return out


def read_lightning_state_dict(path: str) -> dict:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"column tokenizer checkpoint not found: {path}; {WEIGHTS_HELP}")
    what = "a Lightning checkpoint of the column tokenizer ({'state_dict': ...})"
    full = obj = read_released(path, what)
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise not_weights(path, full, what) or \
            ValueError(f"{path}: expected a Lightning checkpoint with a 'state_dict' of tensors")
    return obj


class ColumnTokenizer(Tokenizer):
    """Project interface: `encode(images) -> posterior mean (B, L, D)` (unscaled), `sample(images) -> noisy latents`,
    `decode(tokens (B, L, D)) -> images (B, 3, H, 16*L)`. `scaling_factor` is the generator's vae_norm."""

    kind = "continuous"

    def __init__(self, model: ColumnAutoencoder, scaling_factor: float = VAE_NORM):
        super().__init__()
        self.model = model
        self.latent_channels = model.embed_dim
        self.downsample = model.downsample
        self.in_channels = model.in_channels
        self.height = model.resolution
        self.scaling_factor = scaling_factor
        self.freeze()

    @classmethod
    def from_checkpoint(cls, path: str = DEFAULT_CKPT, config: str | dict = "official", use_ema: bool = True,
                        map_location="cpu") -> "ColumnTokenizer":
        model = build_column_autoencoder(config)
        load_strict(model, module_state_from_lightning(read_lightning_state_dict(path), model, use_ema, path), path,
                    mapped=True)
        return cls(model).to(map_location)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        """(tokens, channels): a column tokenizer makes one token per `downsample` pixels of width."""
        return width // self.downsample, self.latent_channels

    def grid_mask(self, pixel_mask: torch.Tensor) -> torch.Tensor:
        """Bool[B, H, W] -> Bool[B, W/downsample]: a column token covers a full-height strip `downsample` pixels
        wide, so it is regenerated when any pixel of its strip is."""
        if pixel_mask.dim() != 3:
            raise ValueError(f"grid_mask expects a pixel mask [B, H, W], got shape {tuple(pixel_mask.shape)}")
        b, h, w = pixel_mask.shape
        d = self.downsample
        if w % d:
            raise ValueError(f"ColumnTokenizer: a mask {w} pixels wide is not on the column grid (W must be "
                             f"divisible by {d})")
        return pixel_mask.bool().reshape(b, h, w // d, d).any(dim=3).any(dim=1)

    def _check_images(self, images):
        super()._check_images(images)
        if images.shape[-2] != self.height:
            raise ValueError(f"the column tokenizer needs images {self.height} pixels high, got {images.shape[-2]}")
        if images.shape[-1] < 2 * self.downsample:
            raise ValueError(f"reflect padding needs at least 2 columns ({2 * self.downsample} pixels) of width")

    def _encode(self, images):
        return self.model.encode_mean(images.to(self.model.quant_layer.weight.dtype))

    @torch.no_grad()
    def sample(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Noise-augmented latents (unscaled), as the generator's training data is made."""
        return gaussian_sample(self.encode(images), POSTERIOR_STD, generator)

    def _decode(self, tokens):
        if tokens.dim() != 3 or tokens.shape[-1] != self.latent_channels:
            raise ValueError(f"decode expects tokens (B, L, {self.latent_channels}), got {tuple(tokens.shape)}")
        return self.model.decode(tokens)


def load_column_tokenizer(path: str = DEFAULT_CKPT, config: str | dict = "official", use_ema: bool = True,
                          device="cpu") -> ColumnTokenizer:
    return ColumnTokenizer.from_checkpoint(path, config, use_ema, device)


__all__ = ["COLUMN_CONFIGS", "ColumnAutoencoder", "ColumnTokenizer", "build_column_autoencoder", "gaussian_sample",
           "l2_penalty", "ema_buffer_name", "module_state_from_lightning", "load_column_tokenizer", "VAE_NORM",
           "POSTERIOR_STD"]
