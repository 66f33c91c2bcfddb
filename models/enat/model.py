"""ENAT (NeurIPS 2024): encoder-decoder non-autoregressive transformer over VQ tokens, with temporal feature reuse.

Parameter names follow the official `libs.models.DiT` so released EMA weights load strictly
(`assets/layouts/keys_enat_L_{256,512}.json`).

Per forward (no reuse): visible tokens are encoded alone by the first NE blocks; [MASK] tokens are decoded by the last
ND blocks with SC-attention over concat[final visible features ; current mask tokens]; the final affine LayerNorm and
the tied MlmLayer give logits for all L positions.

With `prev` (the state of the previous sampling step): features of the tokens visible at the previous step pass
through `prev_proj` and stand for those tokens; only newly revealed tokens run through the encoder, attending to the
projected features (through kv.A) in every encoder layer; the decoder then runs over all masked tokens.

Unlike the official code, rows may have different numbers of masked tokens (ragged sets, see models/enat/blocks.py).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from models.enat.blocks import ENATBlock, PrevProj, TokenSet, key_padding_mask
from models.layers import BertEmbeddings, Mlp, MlmLayer


class LabelEmbedder(nn.Module):
    """Class embedding with train-mode label dropout to the null class (index num_classes).

    The official table (DiT convention) has a null row only when label dropout is on: num_classes + 1 rows if
    dropout_prob > 0, else num_classes rows. `null_row` overrides that (None = the official rule), e.g. to train
    without in-model dropout while the dataset still replaces labels by the null class."""

    def __init__(self, num_classes: int, dim: int, dropout_prob: float, null_row: bool | None = None):
        super().__init__()
        self.null_row = bool(dropout_prob > 0) if null_row is None else bool(null_row)
        if dropout_prob > 0 and not self.null_row:
            raise ValueError(f"class_dropout_prob={dropout_prob} drops labels to the null class, which needs the null "
                             "row: null_row must not be False")
        self.embedding_table = nn.Embedding(num_classes + int(self.null_row), dim)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def check(self, labels: torch.Tensor) -> None:
        """Without a null row the null label (and anything above num_classes − 1) has no embedding: say so."""
        if self.null_row or labels.device.type == "meta" or labels.numel() == 0:
            return
        if bool((labels >= self.num_classes).any()):
            raise ValueError(f"ENAT: label {int(labels.max())} given, but this label table has {self.num_classes} "
                             f"rows and no null row (class_dropout_prob = 0, the official layout without label "
                             f"dropout): unconditional / guided sampling and null-label training are not possible; "
                             f"build the model with null_row=True for a table of {self.num_classes + 1} rows")

    def forward(self, labels: torch.Tensor, train: bool) -> torch.Tensor:
        if train and self.dropout_prob > 0:
            drop = torch.rand(labels.shape, device=labels.device) < self.dropout_prob
            labels = torch.where(drop, torch.full_like(labels, self.num_classes), labels)
        return self.embedding_table(labels)


class ENAT(nn.Module):
    def __init__(self, *, seq_len: int = 256, codebook_size: int = 1024, num_classes: int = 1000,
                 embed_dim: int = 1024, num_heads: int = 16, enc_dec: Sequence[int] = (22, 2),
                 mlp_ratio: float = 4.0, class_dropout_prob: float = 0.1, null_row: bool | None = None,
                 dropout: float = 0.1, attn_backend: str | None = None):
        """null_row: whether the label table has the null-class row (None: only if class_dropout_prob > 0, as the
        official LabelEmbedder; a released class_dropout_prob = 0 checkpoint has num_classes rows)."""
        super().__init__()
        enc_dec = tuple(int(v) for v in enc_dec)
        if len(enc_dec) != 2 or enc_dec[0] < 1 or enc_dec[1] < 1:
            raise ValueError(f"enc_dec must be two positive ints (encoder, decoder depth), got {enc_dec}")
        self.seq_len, self.codebook_size, self.num_classes = int(seq_len), int(codebook_size), int(num_classes)
        self.embed_dim, self.enc_dec = int(embed_dim), enc_dec
        self.mask_id, self.null_label = self.codebook_size, self.num_classes
        d = self.embed_dim
        vocab = self.codebook_size + 1          # + the [MASK] id (= codebook_size)
        self.x_embedder = BertEmbeddings(vocab, d, self.seq_len, dropout=dropout)
        self.y_embedder = LabelEmbedder(self.num_classes, d, class_dropout_prob, null_row)
        # part of the released state dict, never used by the forward pass
        self.prev_embedder = Mlp(d, 4 * d, approximate="tanh")
        self.prev_proj = PrevProj(d)
        self.blocks = nn.ModuleList(ENATBlock(d, num_heads, mlp_ratio, backend=attn_backend)
                                    for _ in range(sum(enc_dec)))
        self.norm = nn.LayerNorm(d)
        self.mlm_layer = MlmLayer(d, d, vocab)
        self.initialize_weights()

    def initialize_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.x_embedder.word_embeddings.weight, std=0.02)
        nn.init.normal_(self.x_embedder.position_embeddings.weight, std=0.02)
        nn.init.normal_(self.y_embedder.embedding_table.weight, std=0.02)
        for blk in self.blocks:  # adaLN-Zero: every block starts as the identity
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)

    @property
    def encoder(self):
        return self.blocks[:self.enc_dec[0]]

    @property
    def decoder(self):
        return self.blocks[self.enc_dec[0]:]

    def _check_inputs(self, ids: torch.Tensor, labels: torch.Tensor, prev: dict | None) -> None:
        if ids.dim() != 2 or ids.shape[1] != self.seq_len:
            raise ValueError(f"ENAT: ids must be [B, {self.seq_len}], got {list(ids.shape)}")
        if labels.shape != ids.shape[:1]:
            raise ValueError(f"ENAT: labels must be [{ids.shape[0]}], got {list(labels.shape)}")
        self.y_embedder.check(labels)
        if prev is None:
            return
        if not isinstance(prev, dict) or "feat" not in prev or "masking" not in prev:
            raise ValueError("ENAT: prev must be the state dict {'feat', 'masking'} returned with return_state=True")
        want = [ids.shape[0], self.seq_len]
        if list(prev["masking"].shape) != want or list(prev["feat"].shape) != want + [self.embed_dim]:
            raise ValueError(f"ENAT: prev['masking'] must be {want} and prev['feat'] {want + [self.embed_dim]}, got "
                             f"{list(prev['masking'].shape)} and {list(prev['feat'].shape)}")

    def forward(self, ids: torch.Tensor, labels: torch.Tensor, prev: dict | None = None,
                return_state: bool = False):
        """ids Long[B, L] (mask id = codebook_size), labels Long[B] (null = num_classes) -> logits [B, L, V];
        with return_state also {'feat': [B, L, D] pre-final-norm features, 'masking': Bool[B, L]}."""
        self._check_inputs(ids, labels, prev)
        # token sets are computed where ids live (their sizes are data-dependent); features may live on `meta`
        dev = self.x_embedder.word_embeddings.weight.device
        masking = ids == self.codebook_size
        x = self.x_embedder(ids.to(dev))
        c = self.y_embedder(labels.to(dev), self.training)
        length = ids.shape[1]

        if prev is None:
            enc_set, ctx_set, ctx = TokenSet.of(~masking, dev), None, None
        else:
            prev_visible = ~prev["masking"].to(masking.device)
            if bool((masking & prev_visible).any()):
                raise ValueError("ENAT: prev['masking'] does not cover the current masking: reuse needs every token "
                                 "visible at the previous step to stay visible")
            enc_set = TokenSet.of(~masking & ~prev_visible, dev)  # newly revealed tokens
            ctx_set = TokenSet.of(prev_visible, dev)
            ctx = self.prev_proj(ctx_set.gather(prev["feat"].detach().to(dev))).to(x.dtype) \
                if ctx_set.size else None

        visible = x  # [B, L, D]; only its visible positions are read below
        if enc_set.size:
            h = enc_set.gather(x)
            mask = key_padding_mask(enc_set, ctx_set if ctx is not None else None)
            for blk in self.encoder:  # the same reused context in every encoder layer
                h = blk(h, c, ctx, mask)
            visible = enc_set.scatter(h, length)
        if ctx is not None:
            visible = torch.where(prev_visible.to(dev).unsqueeze(-1), ctx_set.scatter(ctx, length), visible)

        masked_set = TokenSet.of(masking, dev)
        feat = visible
        if masked_set.size:
            vis_set = TokenSet.of(~masking, dev)
            vis = vis_set.gather(visible)
            m = masked_set.gather(x)
            mask = key_padding_mask(masked_set, vis_set)
            for blk in self.decoder:   # the visible context stays fixed across decoder layers
                m = blk(m, c, vis, mask)
            feat = torch.where(masking.to(dev).unsqueeze(-1), masked_set.scatter(m, length), visible)

        logits = self.mlm_layer(self.norm(feat), self.x_embedder.word_embeddings.weight)[..., :self.codebook_size]
        if return_state:
            return logits, {"feat": feat, "masking": masking}
        return logits


# ---- flavours -------------------------------------------------------------------------------------------------

_SIZES = {  # (enc_dec, embed_dim, num_heads), paper Tab. 7
    "S": ((15, 1), 366, 6),
    "B": ((15, 1), 768, 8),
    "L": ((22, 2), 1024, 16),
    # CPU-test size: 4x4 tokens, 32 codes, 10 classes
    "debug": ((3, 2), 32, 2, dict(seq_len=16, codebook_size=32, num_classes=10)),
    # Fashion-MNIST demo size (~3.3M params): 8x8 tokens, 512 codes, 10 classes
    "demo": ((6, 2), 128, 4, dict(seq_len=64, codebook_size=512, num_classes=10)),
}


def _builder(size: str, input_res: int = 256):
    dflt_enc_dec, dflt_dim, dflt_heads, *rest = _SIZES[size]
    data = rest[0] if rest else {}

    def build(*, input_res: int = input_res, downsample: int = 16, seq_len: int | None = None,
              codebook_size: int | None = None, num_classes: int | None = None,
              enc_dec: Sequence[int] | None = None, embed_dim: int | None = None, num_heads: int | None = None,
              **kwargs) -> ENAT:
        """Keyword overrides: input_res/downsample (-> seq_len = (input_res/downsample)^2) or seq_len directly,
        codebook_size, num_classes (real classes; the null label is num_classes), enc_dec=(NE, ND), embed_dim,
        num_heads, and any ENAT argument (mlp_ratio, class_dropout_prob, null_row, dropout, attn_backend)."""
        if seq_len is None:
            seq_len = data.get("seq_len")
        if seq_len is None:
            if input_res % downsample:
                raise ValueError(f"input_res {input_res} is not a multiple of the tokenizer downsample {downsample}")
            seq_len = (input_res // downsample) ** 2
        return ENAT(seq_len=seq_len,
                    codebook_size=codebook_size if codebook_size is not None else data.get("codebook_size", 1024),
                    num_classes=num_classes if num_classes is not None else data.get("num_classes", 1000),
                    enc_dec=dflt_enc_dec if enc_dec is None else enc_dec,
                    embed_dim=embed_dim or dflt_dim, num_heads=num_heads or dflt_heads, **kwargs)

    return build


FLAVOURS = {
    "ENAT_S": _builder("S"),
    "ENAT_B": _builder("B"),
    "ENAT_L": _builder("L"),
    "ENAT_L_512": _builder("L", input_res=512),
    "debug": _builder("debug"),
    "demo": _builder("demo"),
}
