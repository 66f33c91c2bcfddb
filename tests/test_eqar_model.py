import json
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from models.eqar.model import FLAVOURS, apply_rope, band_mask, eqar_loss, param_groups, rope_tables, training_draws
from models.layers import count_params

LAYOUT = Path(__file__).resolve().parents[1] / "assets/layouts/keys_equ_generator_large.json"


def test_large_places_layout_matches_release_on_meta():
    spec = json.loads(LAYOUT.read_text())
    with torch.device("meta"):
        model = FLAVOURS["large"](class_num=30)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == spec["keys"]
    assert count_params(model) == spec["total_params"] == 643_502_848
    assert count_params(model.diffloss) == spec["diffloss_params"]


@pytest.mark.parametrize("name,total,head", [("small", 127.3, 59.4), ("base", 295.6, 67.7), ("large", 644.5, 105.6),
                                             ("huge", 1203.2, 151.9)])
def test_flavour_parameter_counts(name, total, head):
    with torch.device("meta"):
        model = FLAVOURS[name]()
    assert round(count_params(model) / 1e6, 1) == total
    assert round(count_params(model.diffloss) / 1e6, 1) == head


def test_band_mask():
    m = band_mask(6, 2)
    for i in range(6):
        for j in range(6):
            assert bool(m[i, j]) == (i - 2 <= j <= i)
    assert torch.equal(band_mask(3, 0), torch.eye(3, dtype=torch.bool))


def test_rope_is_complex_rotation_of_interleaved_pairs():
    x = torch.randn(2, 3, 5, 8)
    pos = torch.arange(5) + 7
    cos, sin = rope_tables(pos, 8)
    inv = 1.0 / 10000 ** (torch.arange(0, 8, 2, dtype=torch.float64) / 8)
    rot = torch.polar(torch.ones(5, 4, dtype=torch.float64), pos[:, None].double() * inv[None])
    ref = torch.view_as_real(torch.view_as_complex(x.double().reshape(2, 3, 5, 4, 2).contiguous()) * rot)
    assert torch.allclose(apply_rope(x, cos, sin), ref.reshape(2, 3, 5, 8).float(), atol=1e-5)
    # relative property: <R(p)q, R(p')k> depends only on p - p'
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    def dot(p, pk):
        cq, sq = rope_tables(torch.tensor([p]), 8)
        ck, sk = rope_tables(torch.tensor([pk]), 8)
        return (apply_rope(q, cq, sq) * apply_rope(k, ck, sk)).sum()
    assert torch.allclose(dot(3, 1), dot(13, 11), atol=1e-5)


def _debug(seed=0, **kw):
    torch.manual_seed(seed)
    model = FLAVOURS["debug"](**kw).eval()
    # the released init zeroes the head's output and modulations; randomise so the tests see every path
    with torch.no_grad():
        for p in model.diffloss.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_windowed_causal_receptive_field_and_output_shift():
    model = _debug()
    n, depth, w = 14, 2, model.cond_length
    tok = torch.randn(1, n, 16)
    buf = model.buffer(torch.tensor([3]))
    base = model.features(tok, buf)
    j = 10  # output j is token j's condition: the state of token j-1 after 2 layers of band-3 attention
    reach = j - 1 - depth * w
    for k in range(n):
        changed = tok.clone()
        changed[0, k] += 1.0
        out = model.features(changed, buf)
        moved = not torch.allclose(out[0, j], base[0, j], atol=1e-6)
        assert moved == (reach <= k <= j - 1), k
        assert torch.allclose(out[0, 0], base[0, 0], atol=1e-6)  # token 0 depends on the class only
    other = model.features(tok, model.buffer(torch.tensor([4])))
    assert not torch.allclose(other[0, 0], base[0, 0])


def test_label_drop_uses_fake_latent_and_shift_changes_outputs():
    model = _debug()
    labels = torch.tensor([1, 2])
    buf = model.buffer(labels, torch.tensor([True, False]))
    assert torch.allclose(buf[0], model.fake_latent + model.encoder_pos_embed_learned[0])
    assert torch.allclose(buf[1], model.class_emb.weight[2] + model.encoder_pos_embed_learned[0])
    tok = torch.randn(2, 6, 16)
    assert not torch.allclose(model.features(tok, buf, shift=0), model.features(tok, buf, shift=5))
    d = training_draws(model, 4, 6, torch.Generator().manual_seed(0))
    assert 0 <= d["shift"] < 16 and d["t"].shape == (4 * 6 * 4,) and d["noise"].shape == (96, 16)
    shifts = {training_draws(model, 1, 1, torch.Generator().manual_seed(s))["shift"] for s in range(200)}
    assert shifts == set(range(16))


# ---- an independent re-statement of the whole training loss (explicit loops, complex RoPE)
def _ln(x, m=None, eps=1e-6):
    return F.layer_norm(x, x.shape[-1:], None if m is None else m.weight, None if m is None else m.bias, eps)


def _rot(v, pos):
    d = v.shape[-1]
    inv = 1.0 / 10000 ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    c = torch.view_as_complex(v.double().reshape(*v.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(c * torch.polar(torch.ones_like(inv), pos * inv)).reshape(v.shape).float()


def _reference_loss(model, tokens, labels, draws):
    b, n, c = tokens.shape
    s, h, dh = model.buffer_size, model.num_heads, model.head_dim
    fake = model.fake_latent[0]
    zs = []
    for r in range(b):
        emb = fake if bool(draws["drop"][r]) else model.class_emb.weight[labels[r]]
        seq = torch.cat([emb[None] + model.encoder_pos_embed_learned[0], tokens[r] @ model.z_proj.weight.T
                         + model.z_proj.bias])
        seq = _ln(seq, model.z_proj_ln)
        cond, x = seq[:s], seq[s:]
        for blk in model.encoder_blocks:
            y = _ln(x, blk.norm1)
            q, k, v = (y @ blk.attn.qkv.weight.T + blk.attn.qkv.bias).split(model.embed_dim, dim=-1)
            att = torch.zeros_like(x)
            for i in range(n):
                for hh in range(h):
                    sl = slice(hh * dh, (hh + 1) * dh)
                    js = [j for j in range(n) if i - model.cond_length <= j <= i]
                    qi = _rot(q[i, sl], draws["shift"] + i)
                    ks = torch.stack([_rot(k[j, sl], draws["shift"] + j) for j in js])
                    wts = torch.softmax(ks @ qi / math.sqrt(dh), dim=0)
                    att[i, sl] = wts @ v[js, sl]
            x = x + att @ blk.attn.proj.weight.T + blk.attn.proj.bias
            y = _ln(x, blk.cross_norm, eps=1e-5)  # the release's bare nn.LayerNorm(dim)
            cc = _ln(cond, blk.cross_cond_norm, eps=1e-5)
            q = y @ blk.attn2.qkv.weight.T + blk.attn2.qkv.bias
            k = cc @ blk.attn2.k.weight.T + blk.attn2.k.bias
            v = cc @ blk.attn2.v.weight.T + blk.attn2.v.bias
            att = torch.zeros_like(x)
            for i in range(n):
                for hh in range(h):
                    sl = slice(hh * dh, (hh + 1) * dh)
                    wts = torch.softmax(k[:, sl] @ _rot(q[i, sl], draws["shift"] + i) / math.sqrt(dh), dim=0)
                    att[i, sl] = wts @ v[:, sl]
            x = x + att @ blk.attn2.proj.weight.T + blk.attn2.proj.bias
            allt = torch.cat([cond, x])
            allt = allt + blk.mlp.fc2(F.gelu(blk.mlp.fc1(_ln(allt, blk.norm2))))
            cond, x = allt[:s], allt[s:]
        out = _ln(torch.cat([cond, x]), model.encoder_norm)
        zs.append(out[s - 1:s - 1 + n])
    z = torch.stack(zs).reshape(b * n, -1)
    mul = model.diffusion_batch_mul
    target = tokens.reshape(b * n, c).repeat(mul, 1)
    z = z.repeat(mul, 1)
    t = draws["t"] * (1 - 1e-5) + 1e-5
    xt = t[:, None] * draws["noise"] + (1 - t[:, None]) * target
    v = model.diffloss.net(xt, t, z)
    return ((draws["noise"] - target - v) ** 2).mean()


def test_loss_matches_independent_restatement():
    model = _debug(1)
    tokens, labels = torch.randn(2, 5, 16), torch.tensor([3, 7])
    loss, logs = eqar_loss(model, {"latent": tokens, "label": labels}, generator=torch.Generator().manual_seed(5))
    draws = training_draws(model, 2, 5, torch.Generator().manual_seed(5))
    draws["drop"] = torch.tensor([True, False])  # exercise the dropped-label path in the reference too
    ours = model(tokens, labels, draws)
    ref = _reference_loss(model, tokens, labels, draws)
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-6)
    assert logs["loss"] == pytest.approx(loss.item()) and 0 <= logs["shift"] < 16
    again, _ = eqar_loss(model, {"latent": tokens, "label": labels}, generator=torch.Generator().manual_seed(5))
    assert torch.equal(loss, again)


def test_grad_checkpointing_gives_same_loss_and_grads():
    tokens, labels = torch.randn(2, 6, 16), torch.tensor([0, 9])
    grads = []
    for ckpt in (False, True):
        model = _debug(2, grad_checkpointing=ckpt, attn_dropout=0.0, proj_dropout=0.0).train()
        loss, _ = eqar_loss(model, {"latent": tokens, "label": labels}, generator=torch.Generator().manual_seed(1))
        loss.backward()
        grads.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    assert torch.allclose(grads[0][0], grads[1][0])
    for n, g in grads[0][1].items():
        assert torch.allclose(g, grads[1][1][n], atol=1e-6), n


def test_param_groups_follow_release():
    model = FLAVOURS["debug"]()
    no_decay, decay = param_groups(model, 0.02)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.02
    names = {id(p): n for n, p in model.named_parameters()}
    nd = {names[id(p)] for p in no_decay["params"]}
    d = {names[id(p)] for p in decay["params"]}
    assert nd | d == set(names.values()) and not nd & d
    assert not any("diffloss" in n for n in d)
    assert {"encoder_blocks.0.norm1.weight", "z_proj.bias", "diffloss.net.input_proj.weight"} <= nd
    assert {"class_emb.weight", "fake_latent", "encoder_pos_embed_learned", "encoder_blocks.1.attn.qkv.weight",
            "encoder_blocks.0.attn2.k.weight"} <= d
