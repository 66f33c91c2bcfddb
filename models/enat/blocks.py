"""ENAT building blocks: the adaLN block with SC-attention, the reuse projector, and ragged token-set helpers.

SC-attention (ENAT §3): queries come from the block's own tokens; keys/values are concat[
  context tokens -> norm1_, modulated by (shift_msa_, scale_msa_) -> kv.A ;
  own tokens     -> norm1,  modulated by (shift_msa, scale_msa)   -> kv.B ].
The context is either the fully encoded visible tokens (decoder) or the projected features reused from the previous
step (encoder under temporal reuse). With no context the block is plain self-attention through kv.B.

Rows of a batch may hold different numbers of tokens in a set (visible / masked / newly revealed). Each set is
gathered into a [B, N_max, D] tensor; padding slots carry real (finite) tokens of the row and are hidden from valid
queries by a boolean key mask, so every valid query sees exactly the keys it would see if its row ran alone.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from models.layers import Mlp, attention, check_attention_args


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


class Multiway(nn.Module):
    """Two parallel projections: `A` for context tokens, `B` for the block's own tokens (official key names)."""

    def __init__(self, dim_in: int, dim_out: int, bias: bool = True):
        super().__init__()
        self.A = nn.Linear(dim_in, dim_out, bias=bias)
        self.B = nn.Linear(dim_in, dim_out, bias=bias)


class SCAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, backend: str | None = None):
        super().__init__()
        check_attention_args(dim, num_heads, backend)
        self.num_heads = num_heads
        self.backend = backend
        self.q = nn.Linear(dim, dim)
        self.kv = Multiway(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, ctx: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: modulated own tokens [B, N, D]; ctx: modulated context tokens [B, M, D] or None;
        attn_mask: bool [B, 1, N, M + N] (True = attend) or None."""
        b, n, d = x.shape
        h = self.num_heads
        kv = self.kv.B(x)
        if ctx is not None and ctx.shape[1] > 0:
            kv = torch.cat([self.kv.A(ctx), kv], dim=1)
        q = self.q(x).reshape(b, n, h, d // h).transpose(1, 2)
        kv = kv.reshape(b, kv.shape[1], 2, h, d // h).permute(2, 0, 3, 1, 4)
        out = attention(q, kv[0], kv[1], attn_mask=attn_mask, backend=self.backend)
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class ENATBlock(nn.Module):
    """adaLN-Zero transformer block; the conditioning vector yields 8 modulation vectors:
    shift_msa, scale_msa, shift_msa_, scale_msa_ (context), gate_msa, shift_mlp, scale_mlp, gate_mlp."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, backend: str | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm1_ = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SCAttention(dim, num_heads, backend=backend)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), approximate="tanh")
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 8 * dim))

    def forward(self, x: torch.Tensor, c: torch.Tensor, ctx: torch.Tensor | None = None,
                attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        (shift_msa, scale_msa, shift_ctx, scale_ctx, gate_msa,
         shift_mlp, scale_mlp, gate_mlp) = self.adaLN_modulation(c).chunk(8, dim=1)
        h = modulate(self.norm1(x), shift_msa, scale_msa)
        hc = modulate(self.norm1_(ctx), shift_ctx, scale_ctx) if ctx is not None and ctx.shape[1] > 0 else None
        x = x + gate_msa.unsqueeze(1) * self.attn(h, hc, attn_mask)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class PrevProj(nn.Module):
    """Maps the previous step's features before reuse: x + MLP(LN(x)) (affine LN, eps 1e-6, GELU-tanh)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, 4 * dim, approximate="tanh")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(self.norm(x))


@dataclass
class TokenSet:
    """One ragged token set of a batch: positions idx [B, N] (ascending, then padding), valid [B, N]."""
    idx: torch.Tensor
    valid: torch.Tensor
    size: int          # N = the largest row count
    ragged: bool       # some row has padding

    @staticmethod
    def of(sel: torch.Tensor, device: torch.device) -> "TokenSet":
        """`sel` bool [B, L] marks the set. Computed where `sel` lives (it is data-dependent), then moved to the
        device of the features (which may be `meta` for FLOP counting)."""
        counts = sel.sum(dim=1)
        size = int(counts.max()) if sel.shape[0] else 0
        # stable sort puts the set's positions first in ascending order; the remaining positions pad the rows
        order = torch.argsort((~sel).to(torch.uint8), dim=1, stable=True)[:, :size]
        valid = torch.arange(size, device=sel.device).unsqueeze(0) < counts.unsqueeze(1)
        ragged = bool((counts != size).any()) if sel.shape[0] else False
        return TokenSet(order.to(device), valid.to(device), size, ragged)

    def gather(self, x: torch.Tensor) -> torch.Tensor:
        return torch.gather(x, 1, self.idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))

    def scatter(self, x: torch.Tensor, length: int) -> torch.Tensor:
        """[B, N, D] -> [B, L, D]; positions outside the set hold padding garbage, callers select with the set."""
        out = x.new_zeros(x.shape[0], length, x.shape[-1])
        return out.scatter(1, self.idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)


def key_padding_mask(queries: TokenSet, context: TokenSet | None) -> torch.Tensor | None:
    """Bool [B, 1, Nq, Nc + Nq] for SC-attention over concat[context ; queries], or None when nothing is padded.
    Padding queries may attend to everything (their outputs are discarded); this keeps every softmax row non-empty,
    so no NaN can arise and leak into valid rows through padded values."""
    with_ctx = context is not None and context.size > 0
    if not (queries.ragged or (with_ctx and context.ragged)):
        return None
    key_valid = torch.cat([context.valid, queries.valid], dim=1) if with_ctx else queries.valid
    return (key_valid[:, None, None, :] | ~queries.valid[:, None, :, None])
