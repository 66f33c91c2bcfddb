"""The equivariant column AR generator: a windowed-causal transformer over column tokens, conditioned on the class
through cross-attention to `buffer_size` learned tokens, with a per-token rectified-flow head.

Parameter names match the released `places_large.ckpt` (`fake_latent`, `encoder_pos_embed_learned`, `class_emb`,
`z_proj`, `z_proj_ln`, `encoder_blocks.{i}.{norm1, attn.qkv, attn.proj, attn2.qkv (= q), attn2.k, attn2.v,
attn2.proj, cross_norm, cross_cond_norm, norm2, mlp.fc1, mlp.fc2}`, `encoder_norm`, `diffloss.net.*`), so
`load_state_dict(official['model'], strict=True)` works.

Sequence layout: [buffer (S tokens), image tokens (L)], S = buffer_size.
  - buffer = class_emb(label) (or `fake_latent` for the unconditional / dropped label) + encoder_pos_embed_learned;
  - image tokens go through z_proj; z_proj_ln then normalises the whole sequence;
  - every block: image tokens self-attend within a causal band (token i sees j in [i - cond_length, i]) with RoPE
    on q and k; image tokens cross-attend to the normalised buffer with RoPE on q only; an MLP runs over all
    S + L tokens (so the buffer evolves per block but never attends to anything);
  - output = encoder_norm(x)[:, S-1:-1]: the condition of token i is the state of token i-1 (token 0: the last
    buffer token), so one teacher-forced pass trains all L tokens.
RoPE (LLaMA-style, base 10000, interleaved pairs (x[2k], x[2k+1])) uses position = token index + shift; training
draws one shift in [0, shift_num) per batch, sampling uses 0. Nothing depends on L: any number of tokens runs.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.eqar import head_loop, kv_cache
from models.eqar.flow_head import DiffLoss
from models.layers import attention

ROPE_BASE = 10000.0


# ------------------------------------------------------------------------------------------------------------ RoPE
def rope_tables(positions: torch.Tensor, head_dim: int, base: float = ROPE_BASE) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (N, head_dim/2) for integer positions (N,); computed in float64 so long runs stay exact."""
    if head_dim % 2:
        raise ValueError(f"RoPE needs an even head dim, got {head_dim}")
    inv = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float64, device=positions.device) / head_dim))
    ang = positions.to(torch.float64)[:, None] * inv[None]
    return ang.cos().float(), ang.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate pairs (x[..., 2k], x[..., 2k+1]) of x (B, H, N, d) by the angles of positions N."""
    x2 = x.float().reshape(*x.shape[:-1], -1, 2)
    a, b = x2[..., 0], x2[..., 1]
    out = torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1)
    return out.flatten(-2).to(x.dtype)


def band_mask(n: int, cond_length: int, device=None) -> torch.Tensor:
    """Bool (n, n): query i may attend key j iff i - cond_length <= j <= i."""
    i = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None]
    return (j <= i) & (j >= i - cond_length)


# ---------------------------------------------------------------------------------------------------------- blocks
def _attend(q, k, v, mask, drop: float, training: bool):
    if training and drop > 0:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=drop)
    return attention(q, k, v, mask)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads, self.attn_drop = num_heads, attn_drop
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def qkv_heads(self, x, cos, sin):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def out(self, o):
        b, h, n, d = o.shape
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(b, n, h * d)))

    def forward(self, x, cos, sin, mask):
        q, k, v = self.qkv_heads(x, cos, sin)
        return self.out(_attend(q, k, v, mask, self.attn_drop, self.training))


class CrossAttention(nn.Module):
    """Image tokens (queries, RoPE) attend to the buffer tokens (no RoPE). `qkv` is the D->D query projection."""

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__()
        self.num_heads, self.attn_drop = num_heads, attn_drop
        self.qkv = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)

    def _heads(self, t):
        b, n, c = t.shape
        return t.reshape(b, n, self.num_heads, c // self.num_heads).transpose(1, 2)

    def kv(self, cond):
        return self._heads(self.k(cond)), self._heads(self.v(cond))

    def forward(self, x, cos, sin, kv):
        q = apply_rope(self._heads(self.qkv(x)), cos, sin)
        o = _attend(q, kv[0], kv[1], None, self.attn_drop, self.training)
        b, h, n, d = o.shape
        return self.proj_drop(self.proj(o.transpose(1, 2).reshape(b, n, h * d)))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x):
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Block(nn.Module):
    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, attn_drop: float = 0.1,
                 proj_drop: float = 0.1):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = SelfAttention(dim, num_heads, attn_drop, proj_drop)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), proj_drop)
        self.attn2 = CrossAttention(dim, num_heads, attn_drop, proj_drop)
        # the release builds these two with a bare nn.LayerNorm(dim), i.e. torch's eps 1e-5, unlike the 1e-6 of
        # norm1/norm2 (its norm_layer argument)
        self.cross_norm = nn.LayerNorm(dim, eps=1e-5)
        self.cross_cond_norm = nn.LayerNorm(dim, eps=1e-5)

    def cross_kv(self, cond):
        return self.attn2.kv(self.cross_cond_norm(cond))

    def forward(self, cond, x, cos, sin, mask):
        """cond (B, S, D), image tokens x (B, L, D) -> both after this block."""
        x = x + self.attn(self.norm1(x), cos, sin, mask)
        x = x + self.attn2(self.cross_norm(x), cos, sin, self.cross_kv(cond))
        h = torch.cat([cond, x], dim=1)
        h = h + self.mlp(self.norm2(h))
        s = cond.shape[1]
        return h[:, :s], h[:, s:]

    # incremental decoding (samplers.column_ar): the buffer's track and the image tokens' track run separately
    def cond_step(self, cond):
        return cond + self.mlp(self.norm2(cond))

    def token_step(self, x, cos, sin, past_k, past_v, cross_kv):
        """One new image token x (B, 1, D) given the rotated keys/values of the tokens in its window
        (B, H, w, d); returns the token after this block and its own (k, v)."""
        q, k, v = self.attn.qkv_heads(self.norm1(x), cos, sin)
        keys = torch.cat([past_k, k], dim=2) if past_k is not None else k
        vals = torch.cat([past_v, v], dim=2) if past_v is not None else v
        x = x + self.attn.out(attention(q, keys, vals))
        x = x + self.attn2(self.cross_norm(x), cos, sin, cross_kv)
        x = x + self.mlp(self.norm2(x))
        return x, k, v


# ----------------------------------------------------------------------------------------------------------- model
class EquivariantAR(nn.Module):
    def __init__(self, vae_embed_dim: int = 256, class_num: int = 1000, buffer_size: int = 16,
                 embed_dim: int = 1024, depth: int = 32, num_heads: int = 16, mlp_ratio: float = 4.0,
                 cond_length: int = 3, shift_num: int = 16, label_drop_prob: float = 0.1,
                 attn_dropout: float = 0.1, proj_dropout: float = 0.1, diffloss_d: int = 12,
                 diffloss_w: int = 1280, diffusion_batch_mul: int = 4, grad_checkpointing: bool = False):
        super().__init__()
        if buffer_size < 1 or cond_length < 0 or shift_num < 1 or diffusion_batch_mul < 1:
            raise ValueError("need buffer_size >= 1, cond_length >= 0, shift_num >= 1, diffusion_batch_mul >= 1")
        self.token_embed_dim = vae_embed_dim
        self.class_num, self.buffer_size, self.embed_dim = class_num, buffer_size, embed_dim
        self.num_heads, self.cond_length, self.shift_num = num_heads, cond_length, shift_num
        self.label_drop_prob, self.diffusion_batch_mul = label_drop_prob, diffusion_batch_mul
        self.grad_checkpointing = grad_checkpointing

        self.class_emb = nn.Embedding(class_num, embed_dim)
        self.fake_latent = nn.Parameter(torch.zeros(1, embed_dim))
        self.z_proj = nn.Linear(vae_embed_dim, embed_dim)
        self.z_proj_ln = nn.LayerNorm(embed_dim, eps=1e-6)
        self.encoder_pos_embed_learned = nn.Parameter(torch.zeros(1, buffer_size, embed_dim))
        self.encoder_blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, attn_dropout, proj_dropout)
                                             for _ in range(depth)])
        self.encoder_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.initialize_weights()
        # created after the transformer init: the head keeps its own (zero-output) initialisation
        self.diffloss = DiffLoss(vae_embed_dim, embed_dim, diffloss_d, diffloss_w, grad_checkpointing)

    def initialize_weights(self):
        for p in (self.class_emb.weight, self.fake_latent, self.encoder_pos_embed_learned):
            nn.init.normal_(p, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.num_heads

    # -- pieces shared by training and sampling
    def buffer(self, labels: torch.Tensor, drop: torch.Tensor | None = None) -> torch.Tensor:
        """(B, S, D) condition tokens; rows with drop=True use fake_latent (the unconditional class)."""
        emb = self.class_emb(labels)
        if drop is not None:
            emb = torch.where(drop[:, None], self.fake_latent.to(emb.dtype).expand_as(emb), emb)
        return emb[:, None] + self.encoder_pos_embed_learned

    def rope(self, positions: torch.Tensor):
        return rope_tables(positions, self.head_dim)

    def features(self, tokens: torch.Tensor, buffer: torch.Tensor, shift: int = 0) -> torch.Tensor:
        """Teacher forcing: tokens (B, L, C), buffer (B, S, D) -> condition z (B, L, D) of every token."""
        b, n, _ = tokens.shape
        s = self.buffer_size
        x = self.z_proj_ln(torch.cat([buffer, self.z_proj(tokens)], dim=1))
        cond, x = x[:, :s], x[:, s:]
        cos, sin = self.rope(torch.arange(n, device=tokens.device) + int(shift))
        mask = band_mask(n, self.cond_length, tokens.device)
        for blk in self.encoder_blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                cond, x = checkpoint(blk, cond, x, cos, sin, mask, use_reentrant=False)
            else:
                cond, x = blk(cond, x, cos, sin, mask)
        return self.encoder_norm(torch.cat([cond, x], dim=1))[:, s - 1:-1]

    # the fast sampling path's two per-token functions (models/eqar/condition.py), methods so that sample.compile
    # can put its switch on them (engine/compile_sampling.py, Family.sampling.compile_targets)
    def fused_step(self, weights, token, c, s, past_k, past_v, cross):
        """kv_cache.token_step: one new token through every block given its window's past keys/values."""
        return kv_cache.token_step(weights, token, c, s, past_k, past_v, cross)

    def fused_flow(self, prep, z, noise, scale=None):
        """head_loop.integrate: the flow head's whole Euler loop for one token."""
        return head_loop.integrate(prep, z, noise, scale)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor, draws: dict) -> torch.Tensor:
        """Training objective (scalar) given the step's random draws (see `training_draws`)."""
        b, n, c = tokens.shape
        z = self.features(tokens, self.buffer(labels, draws["drop"]), int(draws["shift"]))
        mul = self.diffusion_batch_mul
        target = tokens.reshape(b * n, c).repeat(mul, 1)
        z = z.reshape(b * n, -1).repeat(mul, 1)
        return self.diffloss(target, z, draws["t"].to(tokens.device), draws["noise"].to(tokens.device, tokens.dtype))


def training_draws(model: EquivariantAR, batch: int, seq_len: int, generator: torch.Generator | None = None,
                   device="cpu") -> dict:
    """All randomness of one training step, from `generator` (CPU) in this order: label drop (B uniforms), RoPE shift
    (one integer in [0, shift_num)), flow times (B*L*mul uniforms), flow noise (B*L*mul x C normals)."""
    rows = batch * seq_len * model.diffusion_batch_mul
    drop = torch.rand(batch, generator=generator) < model.label_drop_prob
    shift = int(torch.randint(0, model.shift_num, (1,), generator=generator))
    t = torch.rand(rows, generator=generator)
    noise = torch.randn(rows, model.token_embed_dim, generator=generator)
    return {"drop": drop.to(device), "shift": shift, "t": t.to(device), "noise": noise.to(device)}


def eqar_loss(model: nn.Module, batch: dict, ctx=None, *,
              generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict]:
    """Flow loss over all tokens of batch {'latent': (B, L, C) already x vae_norm, 'label': Long[B]}.

    `model` may be DDP-wrapped: attributes come from `.module`, the forward goes through `model`. `ctx` (the
    engine's TrainContext) is accepted so the function can serve as a family's loss as is; it is not used.
    Without `generator` the draws come from the global torch RNG (seeded per step and rank by the engine).
    """
    net = model.module if hasattr(model, "module") else model
    tokens, labels = batch["latent"], batch["label"]
    if tokens.dim() != 3 or tokens.shape[-1] != net.token_embed_dim:
        raise ValueError(f"batch['latent'] must be (B, L, {net.token_embed_dim}), got {list(tokens.shape)}")
    draws = training_draws(net, tokens.shape[0], tokens.shape[1], generator, tokens.device)
    loss = model(tokens, labels, draws)
    return loss, {"loss": loss.item(), "shift": draws["shift"], "label_drop": draws["drop"].float().mean().item()}


def param_groups(model: nn.Module, weight_decay: float = 0.02) -> list[dict]:
    """AdamW groups as released: no decay on biases, 1-D tensors (norms) and every flow-head parameter."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim == 1 or name.endswith(".bias") or "diffloss" in name:
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


# -------------------------------------------------------------------------------------------------------- flavours
COMMON = dict(vae_embed_dim=256, class_num=1000, buffer_size=16, cond_length=3, shift_num=16, label_drop_prob=0.1,
              attn_dropout=0.1, proj_dropout=0.1, diffloss_d=12, diffusion_batch_mul=4)


def _builder(defaults: dict):
    def build(**overrides) -> EquivariantAR:
        return EquivariantAR(**{**defaults, **overrides})
    build.defaults = dict(defaults)
    return build


FLAVOURS = {
    # tests: a few milliseconds per step on a CPU
    "debug": _builder({**COMMON, "vae_embed_dim": 16, "class_num": 10, "buffer_size": 4, "embed_dim": 32,
                       "depth": 2, "num_heads": 4, "diffloss_d": 2, "diffloss_w": 32}),
    "small": _builder({**COMMON, "embed_dim": 512, "depth": 16, "num_heads": 8, "diffloss_w": 960}),     # 127.3M
    "base": _builder({**COMMON, "embed_dim": 768, "depth": 24, "num_heads": 12, "diffloss_w": 1024}),    # 295.6M
    "large": _builder({**COMMON, "embed_dim": 1024, "depth": 32, "num_heads": 16, "diffloss_w": 1280}),  # 644.5M
    "huge": _builder({**COMMON, "embed_dim": 1280, "depth": 40, "num_heads": 16, "diffloss_w": 1536}),   # 1203.2M
}

__all__ = ["EquivariantAR", "FLAVOURS", "eqar_loss", "training_draws", "param_groups", "band_mask", "rope_tables",
           "apply_rope"]
