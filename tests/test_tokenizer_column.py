import json
import logging
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from tokenizer import CheckpointMismatchError
from tokenizer.column import (AttnBlock, ColumnTokenizer, DownsampleShuffleResidual, UpsampleShuffleResidual,
                              build_column_autoencoder, columnize, ema_buffer_name, gaussian_sample, l2_penalty,
                              rasterize)

LAYOUT = Path(__file__).resolve().parents[1] / "assets/layouts/keys_equ_tokenizer.json"
MODULES = ("encoder", "decoder", "semantic_decoder", "quant_layer", "post_quant_layer")


def test_official_layout_matches_release_on_meta():
    spec = json.loads(LAYOUT.read_text())
    with torch.device("meta"):
        model = build_column_autoencoder("official")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    modules = {k: v for k, v in spec["keys"].items() if not k.startswith("ema_")}
    assert len(ours) == 400 and ours == modules
    # the LitEma buffers the file holds are exactly our parameters under the dot-free naming rule
    ema = {ema_buffer_name(m, n): list(p.shape) for m in MODULES for n, p in getattr(model, m).named_parameters()}
    for m in MODULES:
        ema[f"ema_{m}.decay"] = ema[f"ema_{m}.num_updates"] = []
    assert ema == {k: v for k, v in spec["keys"].items() if k.startswith("ema_")} and len(ema) == 410
    for m, n in spec["param_counts"].items():
        assert sum(p.numel() for p in getattr(model, m).parameters()) == n, m
    assert sum(p.numel() for p in model.parameters()) == spec["total_params"] == 281_558_531
    assert model.post_channels == 4096 and model.downsample == 16
    convs = [mod for mod in model.modules() if isinstance(mod, (torch.nn.Conv1d, torch.nn.Conv2d))
             and mod.kernel_size[0] == 3]
    assert convs and all(c.padding_mode == "reflect" for c in convs)


def test_columnize_is_channel_major_and_inverts():
    z = torch.randn(2, 3, 4, 5)
    cols = columnize(z)
    assert cols.shape == (2, 12, 5)
    c, h, w = 2, 3, 4
    assert cols[1, c * 4 + h, w] == z[1, c, h, w]
    assert torch.equal(rasterize(cols, 3), z)


def test_shuffle_resamplers_shortcut_is_pool_and_nearest():
    x = torch.randn(1, 8, 4, 6)
    down, up = DownsampleShuffleResidual(8, 8), UpsampleShuffleResidual(8, 8)
    for m in (down, up):
        torch.nn.init.zeros_(m.conv.conv.weight)
        torch.nn.init.zeros_(m.conv.conv.bias)
    assert torch.allclose(down(x), F.avg_pool2d(x, 2), atol=1e-6)
    assert torch.allclose(up(x), F.interpolate(x, scale_factor=2.0, mode="nearest"), atol=1e-6)
    # the conv branch lands in pixel-(un)shuffle order
    torch.nn.init.normal_(down.conv.conv.weight)
    assert torch.allclose(down(x) - F.avg_pool2d(x, 2), F.pixel_unshuffle(down.conv.conv(x), 2), atol=1e-5)


def test_attention_is_global_single_head():
    torch.manual_seed(0)
    blk = AttnBlock(32)
    x = torch.randn(1, 32, 3, 5)
    y = blk.norm(x)
    q, k, v = (m(y).flatten(2) for m in (blk.q, blk.k, blk.v))  # (1, C, N)
    w = torch.softmax(q.transpose(1, 2) @ k / 32 ** 0.5, dim=-1)  # (1, N, N)
    ref = x + blk.proj_out((v @ w.transpose(1, 2)).reshape(1, 32, 3, 5))
    assert torch.allclose(blk(x), ref, atol=1e-5)


def _debug_tok(seed=0):
    torch.manual_seed(seed)
    return ColumnTokenizer(build_column_autoencoder("debug"))


def test_encode_decode_shapes_any_width():
    tok = _debug_tok()
    assert tok.kind == "continuous" and tok.latent_channels == 16 and tok.downsample == 4
    for n_tok in (2, 5):
        x = torch.rand(2, 3, 16, 4 * n_tok) * 2 - 1
        z = tok.encode(x)
        assert z.shape == (2, n_tok, 16)
        assert torch.allclose(z, tok.model.quant_layer(tok.model.encoder(x)).transpose(1, 2))
        img = tok.decode(z)
        assert img.shape == (2, 3, 16, 4 * n_tok) and img.abs().max() <= 1
        img2, sem = tok.model.decode(z, semantic=True)
        assert sem.shape == (2, 64, 4, n_tok)
        assert torch.allclose(img2.clamp(-1, 1), img)
    assert tok.latent_size(16, 24) == (6, 16)
    with pytest.raises(ValueError, match="16 pixels high"):
        tok.encode(torch.zeros(1, 3, 32, 8))
    assert not any(p.requires_grad for p in tok.parameters())


def test_gaussian_sample_one_clamped_scale_per_image():
    mean = torch.randn(64, 3, 4)
    out = gaussian_sample(mean, 2.5, torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    s = torch.randn(64, generator=g) * (2.5 / 0.8)
    eps = torch.randn(64, 3, 4, generator=g)
    ref = mean + s.clamp(-2.5, 2.5)[:, None, None] * eps
    assert torch.allclose(out, ref)
    ratio = (out - mean) / eps
    assert torch.allclose(ratio, ratio[:, :1, :1].expand_as(ratio), atol=1e-4)  # one scalar per image
    assert ratio.abs().max() <= 2.5 + 1e-4
    assert (ratio[:, 0, 0].abs() > 2.499).any()  # clamping binds for a std of 3.125
    assert torch.allclose(l2_penalty(mean), 0.5 * (mean ** 2).sum((1, 2)))


def _lightning_file(tmp_path, model, ema_shift=1.0, extra=None, drop=None, loss_keys=2):
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    for m in MODULES:
        for n, p in getattr(model, m).named_parameters():
            sd[ema_buffer_name(m, n)] = p.detach() + ema_shift
        sd[f"ema_{m}.decay"] = torch.tensor(0.99)
        sd[f"ema_{m}.num_updates"] = torch.tensor(10, dtype=torch.int32)
    for i in range(loss_keys):
        sd[f"loss.discriminator.w{i}"] = torch.zeros(2)
    sd.update(extra or {})
    for k in drop or ():
        del sd[k]
    path = tmp_path / "tokenizer.ckpt"
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 7}, path)
    return path


def test_lightning_loader_ema_and_live(tmp_path, caplog):
    src = build_column_autoencoder("debug")
    path = _lightning_file(tmp_path, src)
    with caplog.at_level(logging.INFO, logger="tokenizer.column"):
        ema_tok = ColumnTokenizer.from_checkpoint(str(path), "debug")
    assert "ignoring 2 loss.* entries" in caplog.text
    live_tok = ColumnTokenizer.from_checkpoint(str(path), "debug", use_ema=False)
    for k, v in src.state_dict().items():
        assert torch.equal(live_tok.model.state_dict()[k], v), k
        assert torch.allclose(ema_tok.model.state_dict()[k], v + 1.0), k


def test_lightning_loader_names_bad_keys(tmp_path):
    src = build_column_autoencoder("debug")
    path = _lightning_file(tmp_path, src, extra={"encoder.extra": torch.zeros(1)},
                           drop=["decoder.conv_out.bias", "ema_decoder.conv_outweight"])
    with pytest.raises(CheckpointMismatchError) as e:
        ColumnTokenizer.from_checkpoint(str(path), "debug")
    msg = str(e.value)
    assert "decoder.conv_out.bias" in msg and "ema_decoder.conv_outweight" in msg and "encoder.extra" in msg
    # live weights do not need the EMA buffers, but still every module tensor
    path = _lightning_file(tmp_path, src, drop=["ema_decoder.conv_outweight", "quant_layer.bias"])
    with pytest.raises(CheckpointMismatchError, match="quant_layer.bias") as e:
        ColumnTokenizer.from_checkpoint(str(path), "debug", use_ema=False)
    assert "ema_decoder" not in str(e.value)
    path = _lightning_file(tmp_path, src, extra={"ema_encoder.bogus": torch.zeros(1)})
    with pytest.raises(CheckpointMismatchError, match="ema_encoder.bogus"):
        ColumnTokenizer.from_checkpoint(str(path), "debug")
    with pytest.raises(FileNotFoundError, match="tokenizer.ckpt"):
        ColumnTokenizer.from_checkpoint(str(tmp_path / "absent.ckpt"), "debug")


# ---- semantic decoder: the release builds num_res_blocks + 1 ResNet blocks per level but runs only the first
# num_res_blocks (the last one is in the state dict, idle). The expected forward below is written from that fact
# and the LDM ResNet block (GroupNorm(32, eps 1e-6) -> swish -> 3x3 reflect conv, twice, + 1x1 shortcut when the
# width changes), reading the module's parameters by name only.
def _gn_swish(x, sd, p):
    y = F.group_norm(x, 32, sd[p + "weight"], sd[p + "bias"], 1e-6)
    return y * torch.sigmoid(y)


def _conv_reflect(x, sd, p):
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="reflect"), sd[p + "weight"], sd[p + "bias"])


def _semantic_reference(sd, h, levels, run):
    for lvl in range(levels):
        for i in range(run):
            p = f"down.{lvl}.block.{i}."
            r = _conv_reflect(_gn_swish(h, sd, p + "norm1."), sd, p + "conv1.")
            r = _conv_reflect(_gn_swish(r, sd, p + "norm2."), sd, p + "conv2.")
            if p + "nin_shortcut.weight" in sd:
                h = F.conv2d(h, sd[p + "nin_shortcut.weight"], sd[p + "nin_shortcut.bias"])
            h = h + r
    return _conv_reflect(_gn_swish(h, sd, "norm_out."), sd, "conv_out.")


def test_semantic_decoder_runs_num_res_blocks_of_the_num_res_blocks_plus_one_it_builds():
    from tokenizer.column import COLUMN_CONFIGS
    torch.manual_seed(0)
    cfg = {**COLUMN_CONFIGS["debug"], "semantic_channels": (64, 96), "semantic_num_res_blocks": 2}
    model = build_column_autoencoder(cfg).eval()
    sem = model.semantic_decoder
    # scale the residual branches up so that every block changes the output by O(1)
    with torch.no_grad():
        for n, p in sem.named_parameters():
            if ".conv" in n and n.endswith("weight"):
                p.mul_(4.0)
    sd = {k: v.clone() for k, v in sem.state_dict().items()}
    for lvl in range(2):  # 3 blocks built per level, the extra one is part of the (strictly loaded) state dict
        assert f"down.{lvl}.block.2.conv2.weight" in sd and f"down.{lvl}.block.3.conv1.weight" not in sd
    tokens = torch.randn(2, 3, 16)
    with torch.no_grad():
        img, out = model.decode(tokens, semantic=True)
        cols = model.post_quant_layer(tokens.transpose(1, 2))
        _, feat = model.decoder(cols, semantic=True)
        ref = _semantic_reference(sd, feat, levels=2, run=2)
        assert out.shape == (2, 96, 4, 3) and torch.allclose(out, ref, atol=1e-4)
        assert torch.allclose(img, model.decoder(cols), atol=1e-6)
        # running the extra blocks too would be a different function (what the released weights were not trained as)
        assert (_semantic_reference(sd, feat, 2, 3) - ref).abs().max() > 1e-2
        # the idle blocks' parameters do not reach the output; those of a running block do
        for lvl in range(2):
            for p in sem.down[lvl].block[2].parameters():
                p.add_(torch.randn_like(p))
        assert torch.equal(model.decode(tokens, semantic=True)[1], out)
        sem.down[1].block[1].conv2.weight.add_(1.0)
        assert not torch.allclose(model.decode(tokens, semantic=True)[1], out, atol=1e-3)


def test_official_semantic_decoder_runs_two_of_three_blocks():
    with torch.device("meta"):
        sem = build_column_autoencoder("official").semantic_decoder
    assert sem.num_res_blocks == 2 and [len(level.block) for level in sem.down] == [3, 3]
    with pytest.raises(ValueError, match="semantic_num_res_blocks"):
        from tokenizer.column import SemanticDecoder
        SemanticDecoder(64, (64,), 0)
