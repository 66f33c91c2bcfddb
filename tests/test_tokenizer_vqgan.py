import json
import os

import pytest
import torch

from tokenizer import CheckpointMismatchError, build_tokenizer
from tokenizer.vqgan import VQGANTokenizer, build_vqmodel, read_vqgan_state_dict

SPEC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "layouts",
                    "keys_vqgan_mage.json")


def test_released_layout_matches_spec_on_meta():
    with open(SPEC) as f:
        spec = json.load(f)
    with torch.device("meta"):
        model = build_vqmodel("mage")
    ours = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert ours == spec["keys"]
    assert len(ours) == spec["_meta"]["n_keys"] == 168
    assert sum(p.numel() for p in model.parameters()) == spec["_meta"]["n_params"] == 54_515_587
    assert sum(p.numel() for p in model.encoder.parameters()) == spec["_meta"]["encoder_params"]
    assert sum(p.numel() for p in model.decoder.parameters()) == spec["_meta"]["decoder_params"]


def _tiny_state(seed=0):
    torch.manual_seed(seed)
    return build_vqmodel("tiny").state_dict()


@pytest.mark.parametrize("nested", [False, True])
def test_tiny_checkpoint_roundtrip_both_containers(tmp_path, nested):
    sd = _tiny_state()
    path = tmp_path / "vq.ckpt"
    torch.save({"state_dict": sd} if nested else sd, path)
    tok = build_tokenizer("vqgan_mage", ckpt=str(path), config="tiny")
    for k, v in tok.model.state_dict().items():
        assert torch.equal(v, sd[k]), k
    assert tok.kind == "discrete" and tok.codebook_size == 64 and tok.downsample == 4 and tok.in_channels == 3
    assert not tok.training and not any(p.requires_grad for p in tok.parameters())

    x = torch.rand(2, 3, 32, 32) * 2 - 1
    codes = tok.encode(x)
    assert codes.shape == (2, 8, 8) and codes.dtype == torch.long
    assert int(codes.min()) >= 0 and int(codes.max()) < 64
    # the [-1, 1] interface and the official [0, 1] entry give the same tokens
    assert torch.equal(codes, tok.encode_unit((x + 1) / 2))
    # the tokens are the L2-nearest codes of the encoder output
    z = tok.model.encoder((x + 1) / 2).permute(0, 2, 3, 1).reshape(-1, 32)
    ref = torch.cdist(z, tok.model.quantize.embedding.weight).argmin(1).reshape(2, 8, 8)
    assert (ref == codes).float().mean() > 0.99
    img = tok.decode(codes)
    assert img.shape == (2, 3, 32, 32) and img.min() >= -1 and img.max() <= 1
    raw = tok.model.decode_code(codes).clamp(0, 1) * 2 - 1
    assert torch.allclose(img, raw)


def test_decode_quant_equals_decode_of_codes():
    torch.manual_seed(3)
    tok = VQGANTokenizer(build_vqmodel("tiny"))
    codes = torch.randint(0, 64, (2, 6, 5))
    # independent lookup: embedding rows by index, channels first
    quant = tok.model.quantize.embedding.weight[codes].permute(0, 3, 1, 2)
    assert torch.equal(tok.lookup(codes), quant)
    img = tok.decode_quant(quant)
    assert img.shape == (2, 3, 24, 20)
    assert torch.equal(img, tok.decode(codes))
    assert torch.equal(tok.model.decode_quant(quant), tok.model.decode_code(codes))
    # a latent between codebook vectors decodes too (the continuous path)
    mid = tok.decode_quant(0.5 * quant + 0.5 * quant.roll(1, dims=-1))
    assert mid.shape == img.shape and mid.min() >= -1 and mid.max() <= 1 and not torch.equal(mid, img)
    with pytest.raises(ValueError, match=r"latent \[B, 32, h, w\]"):
        tok.decode_quant(torch.zeros(1, 3, 4, 4))


def test_missing_and_unexpected_keys_are_named(tmp_path):
    sd = _tiny_state()
    del sd["decoder.conv_out.bias"]
    sd["quantize.extra"] = torch.zeros(1)
    path = tmp_path / "bad.ckpt"
    torch.save(sd, path)
    with pytest.raises(CheckpointMismatchError) as e:
        VQGANTokenizer.from_checkpoint(str(path), "tiny")
    assert "decoder.conv_out.bias" in str(e.value) and "quantize.extra" in str(e.value)
    assert str(path) in str(e.value)


def test_missing_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="vqgan_jax_strongaug.ckpt"):
        read_vqgan_state_dict(str(tmp_path / "absent.ckpt"))


def test_train_mode_stays_frozen(tmp_path):
    tok = VQGANTokenizer(build_vqmodel("tiny"))
    parent = torch.nn.ModuleDict({"tok": tok, "lin": torch.nn.Linear(2, 2)}).train()
    assert parent["lin"].training and not tok.training and not tok.model.training
    with pytest.raises(ValueError, match="divisible by 4"):
        tok.encode(torch.zeros(1, 3, 30, 32))
