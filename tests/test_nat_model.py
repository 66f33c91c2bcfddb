import json
from pathlib import Path

import pytest
import torch

from models.layers import attention, attention_backend, count_params
from models.nat.model import FLAVOURS, UViT

SPEC = Path(__file__).resolve().parents[1] / "assets" / "layouts" / "keys_autonat_L.json"




def _spec():
    return json.loads(SPEC.read_text())


def test_autonat_L_layout_matches_official_on_meta():
    spec = _spec()
    with torch.device("meta"):
        model = FLAVOURS["AutoNAT_L"]()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == spec["keys"]
    assert len(shapes) == spec["_meta"]["n_keys"] == 314
    assert count_params(model) == spec["_meta"]["n_params"] == 193_655_297
    # a state dict holding exactly the official keys loads strictly (meta tensors: no memory)
    official = {k: torch.empty(s, device="meta") for k, s in spec["keys"].items()}
    result = model.load_state_dict(official, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert model.mlm_layer.bias.shape == (1, 1, 1025)
    assert (model.seq_len, model.mask_id, model.null_label) == (256, 1024, 1000)


def test_official_kwargs_build_the_same_layout():
    spec = _spec()
    kwargs = {k: v for k, v in spec["_meta"]["kwargs"].items()}
    with torch.device("meta"):
        model = UViT(**kwargs)
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == spec["keys"]


def test_strict_load_round_trip_small_and_missing_key_is_reported():
    torch.manual_seed(0)
    src = FLAVOURS["debug"]().eval()
    random_sd = {k: torch.randn_like(v) for k, v in src.state_dict().items()}
    src.load_state_dict(random_sd, strict=True)
    dst = FLAVOURS["debug"]().eval()
    dst.load_state_dict(random_sd, strict=True)
    ids = torch.randint(0, 17, (3, 16))
    labels = torch.tensor([0, 4, 10])
    torch.testing.assert_close(src(ids, labels), dst(ids, labels), rtol=0, atol=0)
    broken = dict(random_sd)
    broken.pop("out_blocks.0.skip_linear.weight")
    with pytest.raises(RuntimeError, match="out_blocks.0.skip_linear.weight"):
        dst.load_state_dict(broken, strict=True)


def test_forward_shapes_any_grid_and_codebook():
    model = UViT(img_size=(3, 5), codebook_size=7, embed_dim=24, depth=2, num_heads=3, num_classes=4).eval()
    ids = torch.randint(0, 8, (2, 15))  # includes the mask id 7
    out = model(ids, torch.tensor([1, 3]))
    assert out.shape == (2, 15, 7)
    with pytest.raises(ValueError, match=r"\[B, 15\]"):
        model(torch.zeros(2, 16, dtype=torch.long), torch.tensor([1, 3]))


def test_sdpa_and_explicit_attention_agree():
    torch.manual_seed(1)
    q, k, v = torch.randn(2, 3, 9, 8), torch.randn(2, 3, 11, 8), torch.randn(2, 3, 11, 8)
    torch.testing.assert_close(attention(q, k, v, backend="sdpa"), attention(q, k, v, backend="math"),
                               rtol=1e-5, atol=1e-5)
    model = FLAVOURS["debug"]().eval()
    ids = torch.randint(0, 17, (4, 16))
    labels = torch.randint(0, 11, (4,))
    with attention_backend("sdpa"):
        fast = model(ids, labels)
    with attention_backend("math"):
        slow = model(ids, labels)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    pinned = FLAVOURS["debug"](attn_backend="math").eval()
    pinned.load_state_dict(model.state_dict())
    torch.testing.assert_close(pinned(ids, labels), fast, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="attention backend"):
        attention(q, k, v, backend="flash")


def test_head_is_tied_through_a_detached_weight():
    torch.manual_seed(2)
    model = FLAVOURS["debug"]()
    ids = torch.randint(0, 8, (2, 16))  # ids 8..16 never enter through the input
    model(ids, torch.tensor([0, 1])).sum().backward()
    grad = model.token_emb.word_embeddings.weight.grad
    assert grad[8:].abs().max() == 0  # the head used those rows, but no gradient came back through it
    assert grad[:8].abs().max() > 0
    assert model.mlm_layer.bias.grad[0, 0, :16].abs().max() > 0
    assert model.mlm_layer.bias.grad[0, 0, 16] == 0  # the mask id's logit is sliced away


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(3)
    plain = FLAVOURS["debug"](emb_dropout=0.0)
    ckpt = FLAVOURS["debug"](emb_dropout=0.0, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    ids, labels = torch.randint(0, 17, (2, 16)), torch.tensor([3, 5])
    plain(ids, labels).square().mean().backward()
    ckpt(ids, labels).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_init_is_small_truncated_normal():
    torch.manual_seed(0)
    model = FLAVOURS["debug"](embed_dim=64)
    w = model.in_blocks[0].attn.qkv.weight
    assert 0.015 < w.std().item() < 0.02 and w.abs().max().item() <= 0.04 + 1e-6
    assert model.token_emb.word_embeddings.weight.abs().max().item() <= 0.04 + 1e-6
    assert model.in_blocks[0].mlp.fc1.bias.abs().max() == 0
    assert torch.all(model.norm.weight == 1) and torch.all(model.mlm_layer.bias == 0)
    with torch.device("meta"):
        demo = FLAVOURS["demo"]()
    assert demo.seq_len == 64 and 2_000_000 < count_params(demo) < 4_000_000


def test_bad_sizes_are_rejected():
    with pytest.raises(ValueError, match="depth"):
        UViT(img_size=2, codebook_size=4, embed_dim=8, depth=3, num_heads=2, num_classes=3)
    with pytest.raises(ValueError, match="num_heads"):
        UViT(img_size=2, codebook_size=4, embed_dim=10, depth=2, num_heads=3, num_classes=3)
