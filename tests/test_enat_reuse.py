"""ENAT temporal reuse through the shared sampler == a slow per-row re-implementation written from the spec text
(specs/nat.md section 4.2), using only the parameter tensors (no module forward of the model under test)."""
import math

import pytest
import torch
import torch.nn.functional as F

from models.enat.model import FLAVOURS
from models.enat.reuse import ReuseModelFn
from samplers.mask_predict import sample
from core.seeding import row_generators
from samplers.strategy import Strategy


def randomized(model, seed=0, std=0.3):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


# ---- the reference: one row, one token list at a time ------------------------------------------------------------

def lin(x, layer):
    return x @ layer.weight.T + layer.bias


def layer_norm(x, eps, weight=None, bias=None):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    y = (x - mu) / torch.sqrt(var + eps)
    return y * weight + bias if weight is not None else y


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def ref_block(blk, heads, own, ctx, c):
    """own [n, D] tokens of the block, ctx [m, D] context tokens (m may be 0), c [D] class embedding."""
    mods = lin(c * torch.sigmoid(c), blk.adaLN_modulation[1]).chunk(8)
    shift, scale, shift_c, scale_c, gate, shift_m, scale_m, gate_m = mods
    h = layer_norm(own, 1e-6) * (1 + scale) + shift
    kv_own = lin(h, blk.attn.kv.B)
    kv_ctx = lin(layer_norm(ctx, 1e-6) * (1 + scale_c) + shift_c, blk.attn.kv.A)
    kv = torch.cat([kv_ctx, kv_own])                       # K/V = concat[context via A ; own tokens via B]
    d = own.shape[1]
    k, v = kv[:, :d], kv[:, d:]
    q = lin(h, blk.attn.q)
    dh = d // heads
    out = []
    for i in range(heads):
        sl = slice(i * dh, (i + 1) * dh)
        att = torch.softmax(q[:, sl] @ k[:, sl].T / math.sqrt(dh), dim=-1)
        out.append(att @ v[:, sl])
    own = own + gate * lin(torch.cat(out, dim=1), blk.attn.proj)
    hm = layer_norm(own, 1e-6) * (1 + scale_m) + shift_m
    return own + gate_m * lin(gelu_tanh(lin(hm, blk.mlp.fc1)), blk.mlp.fc2)


def ref_row(model, ids, label, prev):
    """One row, literally: returns (logits [L, V], feat [L, D]). prev = (feat, visible) of the previous step."""
    m, d, length = model, model.embed_dim, model.seq_len
    emb = m.x_embedder
    x = layer_norm(emb.word_embeddings.weight[ids] + emb.position_embeddings.weight[:length], 1e-6,
                   emb.LayerNorm.weight, emb.LayerNorm.bias)
    c = m.y_embedder.embedding_table.weight[label]
    visible = [p for p in range(length) if ids[p] != m.mask_id]
    masked = [p for p in range(length) if ids[p] == m.mask_id]
    prev_feat, prev_visible = prev if prev is not None else (None, [])
    # reused: tokens visible at the previous step, their previous features through prev_proj (not re-encoded)
    ctx = torch.zeros(0, d)
    if prev_visible:
        pf = prev_feat[prev_visible]
        pp = m.prev_proj
        ctx = pf + lin(gelu_tanh(lin(layer_norm(pf, 1e-6, pp.norm.weight, pp.norm.bias), pp.mlp.fc1)), pp.mlp.fc2)
    # recomputed: the encoder runs only on newly revealed tokens, the same context in every encoder layer
    new = [p for p in visible if p not in prev_visible]
    feat = torch.zeros(length, d)
    if new:
        h = x[new]
        for blk in m.blocks[:m.enc_dec[0]]:
            h = ref_block(blk, blk.attn.num_heads, h, ctx, c)
        feat[new] = h
    if prev_visible:
        feat[prev_visible] = ctx
    # decoder: masked tokens attend to all visible features (fixed across layers) and to themselves
    if masked:
        h = x[masked]
        vis = feat[visible]
        for blk in m.blocks[m.enc_dec[0]:]:
            h = ref_block(blk, blk.attn.num_heads, h, vis, c)
        feat[masked] = h
    hn = layer_norm(feat, 1e-5, m.norm.weight, m.norm.bias)
    mlm = m.mlm_layer
    hh = F.gelu(lin(hn, mlm.fc))
    hh = layer_norm(hh, 1e-5, mlm.ln.weight, mlm.ln.bias)
    logits = hh @ emb.word_embeddings.weight.T + mlm.bias.reshape(-1)
    return logits[:, :m.codebook_size], (feat, visible)


class ReferenceFn:
    """Stateful model function (same protocol as ReuseModelFn): every row keeps its own previous step."""

    def __init__(self, model, reuse=True):
        self.model, self.reuse, self.prev = model, reuse, None
        self.calls = []

    def reset(self):
        self.prev = None

    def __call__(self, ids, labels):
        prev = self.prev if self.reuse and self.prev is not None else [None] * ids.shape[0]
        out = [ref_row(self.model, ids[i], labels[i], prev[i]) for i in range(ids.shape[0])]
        self.prev = [o[1] for o in out]
        logits = torch.stack([o[0] for o in out])
        self.calls.append(logits)
        return logits


class Recorder:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def reset(self):
        self.fn.reset()

    def __call__(self, ids, labels):
        out = self.fn(ids, labels)
        self.calls.append(out)
        return out


@pytest.mark.parametrize("reuse,rule", [(True, "exact"), (True, "ties"), (False, "exact")])
def test_sampling_with_reuse_matches_literal_reference(reuse, rule):
    torch.manual_seed(0)
    model = randomized(FLAVOURS["debug"](), seed=5)
    labels = torch.tensor([3, 7, 1])
    strategy = Strategy.enat_cosine(6, cfg_scale=2.5, mask_temp=1.5, samp_temp=3.0)
    kw = dict(seq_len=model.seq_len, codebook_size=model.codebook_size, strategy=strategy,
              null_label=model.null_label, rule=rule)
    fast = Recorder(ReuseModelFn(model, reuse=reuse))
    ref = ReferenceFn(model, reuse=reuse)
    with torch.no_grad():
        a = sample(fast, labels, row_generators(11, range(3)), **kw)
        b = sample(ref, labels, row_generators(11, range(3)), **kw)
    assert len(fast.calls) == len(ref.calls) == 6
    for x, y in zip(fast.calls, ref.calls):
        assert x.shape == (6, model.seq_len, model.codebook_size)  # 2B rows: conditional then unconditional
        torch.testing.assert_close(x, y, rtol=1e-4, atol=1e-4)
    assert torch.equal(a, b)
    # the sampled images must depend on reuse for this comparison to mean anything
    if reuse:
        plain = Recorder(ReuseModelFn(model, reuse=False))
        with torch.no_grad():
            sample(plain, labels, row_generators(11, range(3)), **kw)
        assert not torch.allclose(plain.calls[2], fast.calls[2], atol=1e-3)


def test_reuse_with_unequal_rows_matches_reference():
    """Rows revealing tokens at different paces (ragged newly-revealed / reused / masked sets, one row with no new
    token at some step), driven by hand instead of the sampler."""
    model = randomized(FLAVOURS["debug"](), seed=6)
    length = model.seq_len
    g = torch.Generator().manual_seed(3)
    tokens = torch.randint(0, model.codebook_size, (3, length), generator=g)
    rank = torch.rand(3, length, generator=g).argsort(1).argsort(1)
    masked_counts = [[16, 16, 16], [15, 11, 16], [9, 11, 5], [2, 6, 1]]
    labels = torch.tensor([0, 10, 4])
    fast, ref = ReuseModelFn(model), ReferenceFn(model)
    fast.reset()
    ref.reset()
    with torch.no_grad():
        for counts in masked_counts:
            ids = tokens.masked_fill(rank < torch.tensor(counts)[:, None], model.mask_id)
            torch.testing.assert_close(fast(ids, labels), ref(ids, labels), rtol=1e-4, atol=1e-4)


def test_reuse_state_restarts_on_a_new_canvas_and_checks_batch_size():
    model = randomized(FLAVOURS["debug"](), seed=7)
    fn = ReuseModelFn(model)
    full = torch.full((2, model.seq_len), model.mask_id)
    labels = torch.tensor([1, 2])
    with torch.no_grad():
        first = fn(full, labels)
        part = full.clone()
        part[:, :5] = 3
        fn(part, labels)
        torch.testing.assert_close(fn(full, labels), first)   # no reset(), yet a fresh start
        with pytest.raises(ValueError, match="reset"):
            fn(part[:1].clone().index_fill_(1, torch.tensor([6]), 4), labels[:1])
