"""ENAT network: official layouts, state-dict round trips, attention paths, ragged batches, input errors."""
import io
import json
import os
import re

import pytest
import torch

from models.enat.model import ENAT, FLAVOURS
from models.enat.family import FAMILY
from models.layers import attention_backend, count_params

SPEC_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "layouts")


def spec(name):
    with open(os.path.join(SPEC_DIR, name)) as f:
        return json.load(f)


def randomized(model, seed=0, std=0.3):
    """adaLN-Zero makes a fresh model the identity; random weights make every path matter."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def masked_ids(model, b, ratios, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, model.codebook_size, (b, model.seq_len), generator=g)
    rank = torch.rand(b, model.seq_len, generator=g).argsort(1).argsort(1)
    n = torch.tensor([round(r * model.seq_len) for r in ratios])
    return ids.masked_fill(rank < n[:, None], model.mask_id), rank


@pytest.mark.parametrize("flavour,json_name,n_params", [
    ("ENAT_L", "keys_enat_L_256.json", 574_298_113),
    ("ENAT_L_512", "keys_enat_L_512.json", 575_084_545),
])
def test_official_layout_on_meta(flavour, json_name, n_params):
    ref = spec(json_name)
    with torch.device("meta"):
        model = FLAVOURS[flavour]()
    assert {k: list(v.shape) for k, v in model.state_dict().items()} == ref["keys"]
    assert count_params(model) == n_params == ref["_meta"]["n_params"]
    # a released checkpoint (plain EMA state dict, no prefix) loads strictly
    sd = {k: torch.empty(s, device="meta") for k, s in ref["keys"].items()}
    assert not model.load_state_dict(sd, strict=True, assign=True).missing_keys


def test_same_size_through_flags():
    # the official CLI (--enc_dec 22 2 --embed_dim 1024 --num_heads 16 --input_res 512) on any builder
    with torch.device("meta"):
        model = FLAVOURS["ENAT_S"](enc_dec=[22, 2], embed_dim=1024, num_heads=16, input_res=512)
    assert count_params(model) == 575_084_545 and model.seq_len == 1024


def test_small_sizes():
    with torch.device("meta"):
        sizes = {name: count_params(FLAVOURS[name]()) for name in ("ENAT_S", "ENAT_B", "demo")}
    assert sizes["ENAT_S"] == 50_384_219   # paper: 50.4M
    assert sizes["ENAT_B"] == 219_646_721  # paper: 219M
    assert 2_000_000 <= sizes["demo"] <= 4_000_000
    assert FAMILY.flavours is FLAVOURS and FAMILY.modes == ("pretrain", "eval", "edit")


def test_debug_keys_follow_official_pattern_and_round_trip():
    model = randomized(FLAVOURS["debug"]())
    ref_keys = spec("keys_enat_L_256.json")["keys"]

    def pattern(keys):
        return {re.sub(r"^blocks\.\d+\.", "blocks.N.", k) for k in keys}

    assert pattern(model.state_dict()) == pattern(ref_keys)
    assert len(model.blocks) == 5
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    buf.seek(0)
    clone = FLAVOURS["debug"]().eval()
    clone.load_state_dict(torch.load(buf, weights_only=True), strict=True)
    ids, _ = masked_ids(model, 2, [0.5, 0.8])
    labels = torch.tensor([3, 10])
    assert torch.equal(model(ids, labels), clone(ids, labels))


def test_init_is_adaln_zero():
    model = FLAVOURS["debug"]()
    for blk in model.blocks:
        assert not blk.adaLN_modulation[1].weight.any() and not blk.adaLN_modulation[1].bias.any()
    assert model.y_embedder.embedding_table.weight.shape[0] == model.num_classes + 1 == 11
    assert model.null_label == 10 and model.mask_id == 32


def test_label_table_follows_class_dropout_like_the_official_embedder():
    """DiT/ENAT convention: a null row only when label dropout is on; both layouts load strictly."""
    ref = spec("keys_enat_L_256.json")["keys"]
    with torch.device("meta"):
        no_drop = FLAVOURS["ENAT_L"](class_dropout_prob=0.0)
    shapes = {k: list(v.shape) for k, v in no_drop.state_dict().items()}
    assert shapes.pop("y_embedder.embedding_table.weight") == [1000, 1024]
    assert shapes == {k: v for k, v in ref.items() if k != "y_embedder.embedding_table.weight"}

    layouts = {0.1: 11, 0.0: 10}  # debug: 10 classes
    saved = {}
    for prob, rows in layouts.items():
        src = randomized(FLAVOURS["debug"](class_dropout_prob=prob), seed=5)
        assert src.y_embedder.embedding_table.weight.shape == (rows, 32)
        buf = io.BytesIO()
        torch.save(src.state_dict(), buf)
        buf.seek(0)
        saved[prob] = (src, torch.load(buf, weights_only=True))
    ids, _ = masked_ids(saved[0.0][0], 2, [0.5, 0.75])
    labels = torch.tensor([0, 9])
    for prob, (src, sd) in saved.items():
        dst = FLAVOURS["debug"](class_dropout_prob=prob).eval()
        res = dst.load_state_dict(sd, strict=True)
        assert not res.missing_keys and not res.unexpected_keys
        assert torch.equal(dst(ids, labels), src(ids, labels))
        other = FLAVOURS["debug"](class_dropout_prob=0.1 if prob == 0.0 else 0.0)
        with pytest.raises(RuntimeError, match="y_embedder.embedding_table.weight"):
            other.load_state_dict(sd, strict=True)
    # the explicit override: no in-model dropout but a null row (e.g. dataset-side label dropout only)
    assert FLAVOURS["debug"](class_dropout_prob=0.0, null_row=True).y_embedder.embedding_table.weight.shape[0] == 11
    with pytest.raises(ValueError, match="null row"):
        FLAVOURS["debug"](class_dropout_prob=0.1, null_row=False)
    # without a null row the null label cannot be embedded: a clear error, not an index error
    plain = saved[0.0][0]
    with pytest.raises(ValueError, match="no null row"):
        plain(ids, torch.tensor([0, plain.null_label]))


def _prev_state(model, ids_prev, labels):
    with torch.no_grad():
        return model(ids_prev, labels, return_state=True)[1]


def test_sdpa_matches_explicit_attention():
    model = randomized(FLAVOURS["debug"]())
    ids, rank = masked_ids(model, 3, [0.9, 0.5, 0.7])
    prev_ids = ids.masked_fill(rank < 14, model.mask_id)
    labels = torch.tensor([1, 10, 4])
    prev = _prev_state(model, prev_ids, labels)
    with torch.no_grad():
        with attention_backend("sdpa"):
            a = model(ids, labels), model(ids, labels, prev=prev)
        with attention_backend("math"):
            b = model(ids, labels), model(ids, labels, prev=prev)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["sdpa", "math"])
def test_unequal_mask_counts_equal_row_by_row(backend):
    model = randomized(FLAVOURS["debug"](), seed=1)
    ids, rank = masked_ids(model, 4, [1.0, 0.25, 0.6, 0.0625], seed=2)
    # previous step: a superset of each row's masking, also with unequal counts (and one row with nothing visible)
    prev_ids = ids.masked_fill(rank < torch.tensor([16, 6, 16, 3])[:, None], model.mask_id)
    labels = torch.tensor([0, 5, 10, 9])
    prev = _prev_state(model, prev_ids, labels)
    with torch.no_grad(), attention_backend(backend):
        for p in (None, prev):
            logits, state = model(ids, labels, prev=p, return_state=True)
            for i in range(4):
                p_i = None if p is None else {k: v[i:i + 1] for k, v in p.items()}
                li, si = model(ids[i:i + 1], labels[i:i + 1], prev=p_i, return_state=True)
                torch.testing.assert_close(logits[i:i + 1], li, rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(state["feat"][i:i + 1], si["feat"], rtol=1e-5, atol=1e-5)
    assert torch.equal(state["masking"], ids == model.mask_id)


def test_reuse_keeps_projected_features_of_previously_visible_tokens():
    model = randomized(FLAVOURS["debug"](), seed=3)
    ids, rank = masked_ids(model, 2, [0.5, 0.5], seed=4)
    prev_ids = ids.masked_fill(rank < 12, model.mask_id)
    labels = torch.tensor([2, 10])
    prev = _prev_state(model, prev_ids, labels)
    with torch.no_grad():
        _, state = model(ids, labels, prev=prev, return_state=True)
        kept = prev_ids != model.mask_id
        torch.testing.assert_close(state["feat"][kept], model.prev_proj(prev["feat"][kept]))
        # a previous step with nothing visible gives exactly the no-reuse result
        empty = {"feat": prev["feat"], "masking": torch.ones_like(prev["masking"])}
        torch.testing.assert_close(model(ids, labels, prev=empty), model(ids, labels))


def test_train_mode_dropouts_are_active_and_eval_is_deterministic():
    model = randomized(FLAVOURS["debug"](class_dropout_prob=1.0))
    ids, _ = masked_ids(model, 2, [0.5, 0.5])
    with torch.no_grad():
        null = model(ids, torch.full((2,), model.null_label))
        model.train()
        model.x_embedder.dropout.p = 0.0
        dropped = model(ids, torch.tensor([1, 2]))   # every label dropped to the null class
        model.eval()
        assert not torch.allclose(model(ids, torch.tensor([1, 2])), null)
    torch.testing.assert_close(dropped, null)


def test_bad_inputs_raise_clear_errors():
    model = FLAVOURS["debug"]().eval()
    ids, rank = masked_ids(model, 2, [0.5, 0.5])
    labels = torch.tensor([1, 2])
    with pytest.raises(ValueError, match=r"ids must be \[B, 16\]"):
        model(ids[:, :8], labels)
    with pytest.raises(ValueError, match="labels must be"):
        model(ids, labels[:1])
    later = torch.where(rank < 4, model.mask_id, ids % model.mask_id)
    prev = _prev_state(model, later, labels)    # fewer masked than now: not a previous step of `ids`
    with pytest.raises(ValueError, match="does not cover"):
        model(ids, labels, prev=prev)
    with pytest.raises(ValueError, match="enc_dec"):
        ENAT(enc_dec=(2,), embed_dim=32, num_heads=2, seq_len=16, codebook_size=8)
    with pytest.raises(ValueError, match="divisible"):
        FLAVOURS["debug"](num_heads=3)
