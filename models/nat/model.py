"""AutoNAT's network: a U-ViT (long skips) over discrete tokens with a tied MLM head, plus its training loss.

Parameter names match the released AutoNAT-L checkpoint (`token_emb`, `context_embed`, `in_blocks.{i}`, `mid_block`,
`out_blocks.{i}.skip_linear`, `norm`, `mlm_layer`), so `load_state_dict(official, strict=True)` works.

Conventions:
  - `codebook_size` V: logits cover ids 0..V-1; the mask id is V (the embedding has V+1 rows).
  - `num_classes` counts embedding rows INCLUDING the null class, as in the official config: `num_classes=1001` is
    ImageNet's 1000 classes plus the null label 1000 (`model.null_label == num_classes - 1`).
  - `model(ids Long[B, L], labels Long[B]) -> logits Float[B, L, V]`: the sampler's model_fn contract as is.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.layers import Attention, BertEmbeddings, Mlp, MlmLayer, init_weights_trunc_normal


class Block(nn.Module):
    """Pre-LN transformer block; with `skip`, first fuses a long-skip input: x = skip_linear(cat[x, skip])."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = False, skip: bool = False,
                 attn_backend: str | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads=num_heads, qkv_bias=qkv_bias, backend=attn_backend)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.skip_linear = nn.Linear(2 * dim, dim) if skip else None

    def forward(self, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.skip_linear is not None:
            x = self.skip_linear(torch.cat([x, skip], dim=-1))
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class UViT(nn.Module):
    """Class-conditional masked-token predictor. `depth` counts in+out blocks (a mid block is added on top).

    img_size: side of the token grid (int) or (h, w); the sequence length is h*w.
    attn_backend: None follows models.layers' process-wide switch; 'sdpa' / 'math' / 'xformers' / 'auto' pin it.
    """

    def __init__(self, img_size: int | tuple[int, int] = 16, codebook_size: int = 1024, embed_dim: int = 768,
                 depth: int = 24, num_heads: int = 8, mlp_ratio: float = 4.0, qkv_bias: bool = False,
                 num_classes: int = 1001, skip: bool = True, emb_dropout: float = 0.1, use_checkpoint: bool = False,
                 attn_backend: str | None = None):
        super().__init__()
        h, w = (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)
        if depth % 2:
            raise ValueError(f"UViT depth must be even (depth/2 in-blocks and out-blocks), got {depth}")
        if codebook_size < 1 or num_classes < 2:
            raise ValueError(f"need codebook_size >= 1 and num_classes >= 2 (null class included), "
                             f"got {codebook_size}, {num_classes}")
        self.grid = (h, w)
        self.seq_len = h * w
        self.codebook_size = codebook_size
        self.mask_id = codebook_size
        self.num_classes = num_classes
        self.null_label = num_classes - 1
        self.use_checkpoint = use_checkpoint

        self.token_emb = BertEmbeddings(codebook_size + 1, embed_dim, self.seq_len, dropout=emb_dropout)
        # the class token: one "position", no dropout
        self.context_embed = BertEmbeddings(num_classes, embed_dim, 1, dropout=0.0)
        blk = dict(dim=embed_dim, num_heads=num_heads, mlp_ratio=mlp_ratio, qkv_bias=qkv_bias,
                   attn_backend=attn_backend)
        self.in_blocks = nn.ModuleList([Block(**blk) for _ in range(depth // 2)])
        self.mid_block = Block(**blk)
        self.out_blocks = nn.ModuleList([Block(**blk, skip=skip) for _ in range(depth // 2)])
        self.norm = nn.LayerNorm(embed_dim)
        self.mlm_layer = MlmLayer(embed_dim, embed_dim, codebook_size + 1)
        self.apply(init_weights_trunc_normal)

    def _run(self, blk: Block, x: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            return checkpoint(blk, x, skip, use_reentrant=False)
        return blk(x, skip)

    def forward(self, ids: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if ids.dim() != 2 or ids.shape[1] != self.seq_len:
            raise ValueError(f"UViT expects token ids [B, {self.seq_len}], got {list(ids.shape)}")
        x = torch.cat([self.context_embed(labels.reshape(-1, 1)), self.token_emb(ids)], dim=1)
        skips = []
        for blk in self.in_blocks:
            x = self._run(blk, x)
            skips.append(x)
        x = self._run(self.mid_block, x)
        for blk in self.out_blocks:
            x = self._run(blk, x, skips.pop())
        x = self.norm(x)[:, 1:]
        logits = self.mlm_layer(x, self.token_emb.word_embeddings.weight)
        return logits[..., : self.codebook_size]


# ---------------------------------------------------------------------------------------------------------- flavours
AUTONAT_L = dict(img_size=16, codebook_size=1024, embed_dim=768, depth=24, num_heads=8, mlp_ratio=4,
                 qkv_bias=False, num_classes=1001, skip=True)


def _builder(defaults: dict):
    def build(input_res: int | None = None, downsample: int = 16, **overrides) -> UViT:
        """`input_res` (with the tokenizer's `downsample`) sets the token grid, as --input_res does for ENAT."""
        if input_res is not None:
            if int(input_res) % int(downsample):
                raise ValueError(f"input_res {input_res} is not a multiple of the tokenizer downsample {downsample}")
            overrides["img_size"] = int(input_res) // int(downsample)
        return UViT(**{**defaults, **overrides})
    build.defaults = dict(defaults)
    return build


FLAVOURS = {
    # a few seconds on CPU: tests and smoke runs
    "debug": _builder(dict(img_size=4, codebook_size=16, embed_dim=32, depth=2, num_heads=2, num_classes=11)),
    # Fashion-MNIST demo: 8x8 tokens, 10 classes + null, ~3.6M params (trains on a 2-core CPU)
    "demo": _builder(dict(img_size=8, codebook_size=512, embed_dim=192, depth=6, num_heads=6, num_classes=11)),
    # AutoNAT-S hyperparameters are not released; this is the "S-like" size (D 512, depth 12) the spec measures
    "AutoNAT_S": _builder({**AUTONAT_L, "embed_dim": 512, "depth": 12, "num_heads": 8}),
    "AutoNAT_L": _builder(AUTONAT_L),
}
