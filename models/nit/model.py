"""NiT: a DiT/SiT-style adaLN-Zero transformer over PACKED variable-resolution latents (no padding).

Parameter names match the released NiT-XL safetensors (`x_embedder.proj`, `t_embedder.mlp.{0,2}`,
`y_embedder.embedding_table`, `projector.{0,2,4}`, `blocks.{i}.{attn.qkv,attn.q_norm,attn.k_norm,attn.proj,mlp.fc1,
mlp.fc2,adaLN_modulation.1}`, `final_layer.{linear,adaLN_modulation.1}`), so `load_state_dict(strict=True)` works.

Interface (the sampler's and the loss's model_fn contract):
  model(x Float[N, C, p, p], t Float[B], y Long[B], hw_list Int[B, 2], return_zs=False)
    -> velocity Float[N, C, p, p]                      (return_zs=False)
    -> (velocity, zs Float[N, z_dim])                  (return_zs=True; zs = REPA projector after block encoder_depth)
  N = sum of h·w over the B images of the pack, images concatenated in order, tokens row-major within an image
  (`pack_latents` / `unpack`). t in [0, 1], 1 = pure noise, fed unscaled to the sinusoidal embedding. y = 1000
  (`num_classes`) is the null class of classifier-free guidance; the network never drops labels itself.

Attention is block-diagonal (models.nit.varlen_attention): an image in a pack gets the same output as alone.

RoPE positions (axial 2-D RoPE on q and k after their LayerNorm; first half of head_dim rotated by position a,
second half by position b):
  'official' (default)  token k of an h×w image gets a = k mod h, b = k div h: what the released weights were trained
                        with; for square images this is (column, row), for non-square ones it is not a 2-D position
  'rowcol'              a = column, b = row for every image: the true 2-D position (same as 'official' when h = w)
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.layers import Mlp, timestep_embedding
from models.nit.varlen_attention import SWITCH as VARLEN_SWITCH, Segments, varlen_attention

ROPE_POSITIONS = ("official", "rowcol")


# ------------------------------------------------------------------------------------------------------- packing
def pack_latents(latents: Sequence[torch.Tensor], patch_size: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """[(C, H, W), ...] -> (x Float[N, C, p, p], hw_list Int32[B, 2] = [H/p, W/p]);
    each latent is rearranged 'c (h p1) (w p2) -> (h w) c p1 p2' and the images are concatenated."""
    p = int(patch_size)
    tokens, hw = [], []
    for i, lat in enumerate(latents):
        if lat.dim() != 3 or lat.shape[1] % p or lat.shape[2] % p:
            raise ValueError(f"latent {i}: need (C, H, W) with H and W multiples of patch size {p}, "
                             f"got {list(lat.shape)}")
        c, hh, ww = lat.shape
        h, w = hh // p, ww // p
        tokens.append(lat.reshape(c, h, p, w, p).permute(1, 3, 0, 2, 4).reshape(h * w, c, p, p))
        hw.append((h, w))
    return torch.cat(tokens), torch.tensor(hw, dtype=torch.int32)


def unpack(x: torch.Tensor, hw_list: torch.Tensor | Sequence, patch_size: int = 1) -> list[torch.Tensor]:
    """Inverse of `pack_latents`: (N, C, p, p) -> [(C, h·p, w·p), ...]."""
    p = int(patch_size)
    hw = hw_list.tolist() if torch.is_tensor(hw_list) else [list(r) for r in hw_list]
    n = sum(int(h) * int(w) for h, w in hw)
    if x.shape[0] != n:
        raise ValueError(f"pack has {x.shape[0]} tokens but hw_list {hw} needs {n}")
    out, start = [], 0
    c = x.shape[1]
    for h, w in hw:
        h, w = int(h), int(w)
        seg = x[start:start + h * w]
        out.append(seg.reshape(h, w, c, p, p).permute(2, 0, 3, 1, 4).reshape(c, h * p, w * p))
        start += h * w
    return out


# ---------------------------------------------------------------------------------------------------------- RoPE
def rope_positions(hw_list: Sequence, mode: str, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b) Long[N]: the positions rotating the first and the second half of each head."""
    if mode not in ROPE_POSITIONS:
        raise ValueError(f"rope_positions must be one of {ROPE_POSITIONS}, got {mode!r}")
    a_parts, b_parts = [], []
    for h, w in hw_list:
        k = torch.arange(int(h) * int(w), device=device)
        # the released model's grid (meshgrid 'xy' of (arange(h), arange(w)) flattened) read row-major
        div = int(h) if mode == "official" else int(w)
        a_parts.append(k % div)
        b_parts.append(torch.div(k, div, rounding_mode="floor"))
    return torch.cat(a_parts), torch.cat(b_parts)


def rope_angles(pos_a: torch.Tensor, pos_b: torch.Tensor, head_dim: int, theta: float = 10000.0):
    """cos, sin Float[N, 1, head_dim]: per axis d = head_dim/2 with frequencies theta^(-2i/d), each used by an
    adjacent (interleaved) pair of channels."""
    d = head_dim // 2
    inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, device=pos_a.device)[: d // 2].float() / d))
    ang = torch.cat([pos_a.float()[:, None] * inv_freq, pos_b.float()[:, None] * inv_freq], dim=1)
    ang = ang.repeat_interleave(2, dim=1)[:, None, :]
    return ang.cos(), ang.sin()


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """Interleaved pairs (x0, x1) -> (-x1, x0)."""
    x = x.unflatten(-1, (-1, 2))
    return torch.stack((-x[..., 1], x[..., 0]), dim=-1).flatten(-2)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    return x * cos + rotate_half(x) * sin


# -------------------------------------------------------------------------------------------------------- layers
def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class PatchEmbed(nn.Module):
    """One (C, p, p) token -> D through a p×p stride-p convolution (a per-token linear map)."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size, bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(1)


class TimestepEmbedder(nn.Module):
    """t -> 256-d [cos, sin] sinusoid (t unscaled, max period 10000) -> Linear, SiLU, Linear."""

    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256):
        super().__init__()
        self.frequency_embedding_size = frequency_embedding_size
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size, bias=True), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size, bias=True))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        emb = timestep_embedding(t, self.frequency_embedding_size)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


class LabelEmbedder(nn.Module):
    """Class id -> D; row `num_classes` is the null class (the trainer drops labels, not this module)."""

    def __init__(self, num_classes: int, hidden_size: int):
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.embedding_table(y)


class PackedAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, backend: str | None = None):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"hidden size {dim} is not divisible by num_heads {num_heads}")
        VARLEN_SWITCH.check_pin(backend)
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        if self.head_dim % 4:
            raise ValueError(f"axial RoPE needs head_dim divisible by 4, got {self.head_dim}")
        self.backend = backend
        self.qkv = nn.Linear(dim, dim * 3, bias=True)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, seg: Segments, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        n, dim = x.shape
        q, k, v = self.qkv(x).reshape(n, 3, self.num_heads, self.head_dim).unbind(1)
        q = apply_rope(self.q_norm(q), cos, sin).to(v.dtype)
        k = apply_rope(self.k_norm(k), cos, sin).to(v.dtype)
        out = varlen_attention(q, k, v, seg, backend=self.backend)
        return self.proj(out.reshape(n, dim))


class NiTBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float = 4.0, qk_norm: bool = True,
                 attn_backend: str | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = PackedAttention(hidden_size, num_heads, qk_norm=qk_norm, backend=attn_backend)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio), approximate="tanh")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size, bias=True))

    def forward(self, x, c_img, seg: Segments, cos, sin):
        # the modulation depends on the image only: compute it per image, then give it to the image's tokens
        # (the same numbers as a per-token Linear, 1/N_tokens of its cost)
        mod = self.adaLN_modulation(c_img).repeat_interleave(_lengths_tensor(seg), dim=0, output_size=seg.total)
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod.chunk(6, dim=1)
        x = x + gate_msa * self.attn(modulate(self.norm1(x), shift_msa, scale_msa), seg, cos, sin)
        return x + gate_mlp * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels, bias=True)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size, bias=True))

    def forward(self, x, c_img, seg: Segments):
        mod = self.adaLN_modulation(c_img).repeat_interleave(_lengths_tensor(seg), dim=0, output_size=seg.total)
        shift, scale = mod.chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


def _lengths_tensor(seg: Segments) -> torch.Tensor:
    return seg.cu_seqlens[1:] - seg.cu_seqlens[:-1]


def build_projector(hidden_size: int, projector_dim: int, z_dim: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(hidden_size, projector_dim), nn.SiLU(), nn.Linear(projector_dim, projector_dim),
                         nn.SiLU(), nn.Linear(projector_dim, z_dim))


# ------------------------------------------------------------------------------------------------------- network
class NiT(nn.Module):
    """Packed class-conditional velocity model; see the module docstring for the call contract.

    num_classes: real classes (the embedding has num_classes + 1 rows; the last is the null class).
    encoder_depth: the REPA projector reads the hidden state after this many blocks (1-based); z_dim = 0 builds no
      projector (inference-only models; the released weights include it).
    class_dropout_prob: kept for the official config; the trainer (models.nit.loss) applies it.
    rope_positions: 'official' | 'rowcol' (module docstring). attn_backend: None follows
      models.nit.varlen_attention's process-wide switch, or one of its backend names.
    """

    def __init__(self, input_size: int = 32, patch_size: int = 1, in_channels: int = 32, hidden_size: int = 1152,
                 depth: int = 28, num_heads: int = 16, mlp_ratio: float = 4.0, class_dropout_prob: float = 0.1,
                 num_classes: int = 1000, qk_norm: bool = True, encoder_depth: int = 8, projector_dim: int = 2048,
                 z_dim: int = 1280, use_checkpoint: bool = False, rope_positions: str = "official",
                 rope_theta: float = 10000.0, attn_backend: str | None = None):
        super().__init__()
        if rope_positions not in ROPE_POSITIONS:
            raise ValueError(f"rope_positions must be one of {ROPE_POSITIONS}, got {rope_positions!r}")
        if z_dim and not 1 <= encoder_depth <= depth:
            raise ValueError(f"encoder_depth must be in 1..{depth}, got {encoder_depth}")
        self.input_size = input_size  # unused by the packed forward; kept from the official signature
        self.patch_size = patch_size
        self.in_channels = in_channels
        self.out_channels = in_channels
        self.hidden_size = hidden_size
        self.num_heads = num_heads
        self.num_classes = num_classes
        self.null_label = num_classes
        self.class_dropout_prob = class_dropout_prob
        self.encoder_depth = encoder_depth
        self.z_dim = z_dim
        self.use_checkpoint = use_checkpoint
        self.rope_positions = rope_positions
        self.rope_theta = rope_theta

        self.x_embedder = PatchEmbed(patch_size, in_channels, hidden_size)
        self.t_embedder = TimestepEmbedder(hidden_size)
        self.y_embedder = LabelEmbedder(num_classes, hidden_size)
        self.projector = build_projector(hidden_size, projector_dim, z_dim) if z_dim else None
        self.blocks = nn.ModuleList([NiTBlock(hidden_size, num_heads, mlp_ratio, qk_norm, attn_backend)
                                     for _ in range(depth)])
        self.final_layer = FinalLayer(hidden_size, patch_size, self.out_channels)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """DiT init: xavier-uniform Linear (zero bias), N(0, 0.02) label table and t-MLP, zero adaLN and output
        layers, so a fresh model predicts exactly 0."""
        def basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        self.apply(basic)
        w = self.x_embedder.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.x_embedder.proj.bias)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embedder.mlp[2].weight, std=0.02)
        for layer in [b.adaLN_modulation[-1] for b in self.blocks] + [self.final_layer.adaLN_modulation[-1],
                                                                      self.final_layer.linear]:
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def _block(self, blk, x, c, seg, cos, sin):
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(blk, x, c, seg, cos, sin, use_reentrant=False)
        return blk(x, c, seg, cos, sin)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor, hw_list: torch.Tensor,
                return_zs: bool = False):
        hw = hw_list.tolist() if torch.is_tensor(hw_list) else [list(r) for r in hw_list]
        seg = Segments([int(h) * int(w) for h, w in hw], x.device)
        p = self.patch_size
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, p, p) or x.shape[0] != seg.total:
            raise ValueError(f"NiT expects x (N={seg.total}, {self.in_channels}, {p}, {p}) for hw_list {hw}, "
                             f"got {list(x.shape)}")
        b = len(hw)
        t = torch.as_tensor(t, device=x.device)
        t = t.expand(b) if t.dim() == 0 else t
        if t.shape != (b,) or y.shape != (b,):
            raise ValueError(f"need one t and one label per image ({b}), got t {list(t.shape)}, y {list(y.shape)}")
        if return_zs and self.projector is None:
            raise ValueError("return_zs=True needs a model built with a projector (z_dim > 0)")

        h = self.x_embedder(x)
        c = self.t_embedder(t) + self.y_embedder(y)  # (B, D), per image
        cos, sin = rope_angles(*rope_positions(hw, self.rope_positions, x.device), self.hidden_size // self.num_heads,
                               self.rope_theta)
        zs = None
        for i, blk in enumerate(self.blocks):
            h = self._block(blk, h, c, seg, cos, sin)
            if return_zs and i + 1 == self.encoder_depth:
                zs = self.projector(h)
        out = self.final_layer(h, c, seg).reshape(-1, self.out_channels, p, p)
        return (out, zs) if return_zs else out


# ------------------------------------------------------------------------------------------------------ flavours
_COMMON = dict(patch_size=1, in_channels=32, num_classes=1000, qk_norm=True, mlp_ratio=4.0, class_dropout_prob=0.1,
               projector_dim=2048, z_dim=1280)
FLAVOUR_ARGS = {
    # NiT-S aligns to RADIO-v2.5-B (768-d) with a 768-wide projector
    "NiT_S": {**_COMMON, "depth": 12, "hidden_size": 384, "num_heads": 6, "encoder_depth": 4,
              "projector_dim": 768, "z_dim": 768},
    "NiT_B": {**_COMMON, "depth": 12, "hidden_size": 768, "num_heads": 12, "encoder_depth": 4},
    "NiT_L": {**_COMMON, "depth": 24, "hidden_size": 1024, "num_heads": 16, "encoder_depth": 6},
    "NiT_XL": {**_COMMON, "depth": 28, "hidden_size": 1152, "num_heads": 16, "encoder_depth": 8},
    "NiT_XXL": {**_COMMON, "depth": 40, "hidden_size": 1536, "num_heads": 24, "encoder_depth": 8},
    # tests and smoke runs: a fraction of a second per CPU forward
    "debug": {**_COMMON, "depth": 2, "hidden_size": 64, "num_heads": 4, "encoder_depth": 1, "projector_dim": 128,
              "z_dim": 48},
    # Fashion-MNIST demo in grey pixel space: 4x4x1 patches (a 32x32 image is 64 tokens, as a 256-px image under
    # DC-AE f32), 10 classes, true 2-D RoPE positions (no released weights to match), no REPA projector; 1.27M params
    "demo": {**_COMMON, "patch_size": 4, "in_channels": 1, "num_classes": 10, "depth": 4, "hidden_size": 128,
             "num_heads": 4, "encoder_depth": 1, "z_dim": 0, "rope_positions": "rowcol"},
}
# the token budget per pack (per GPU) of the official recipes
PACK_LEN = {"NiT_S": 65536, "NiT_B": 65536, "NiT_L": 16384, "NiT_XL": 16384, "NiT_XXL": 8192, "debug": 256,
            "demo": 1024}


def _builder(defaults: dict):
    def build(**overrides) -> NiT:
        return NiT(**{**defaults, **overrides})
    build.defaults = dict(defaults)
    return build


FLAVOURS = {name: _builder(args) for name, args in FLAVOUR_ARGS.items()}
