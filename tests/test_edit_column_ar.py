"""Column AR editing: the eqar family's `edit` extends images to the right (teacher-forced prefix) or, for a model
trained with flips, to the left (the mirrored procedure through the column tokenizer)."""
from dataclasses import replace

import pytest
import torch

from core.seeding import row_generators
from engine.config import load_config
from models import build_model
from tokenizer.column import ColumnTokenizer, build_column_autoencoder

DEBUG = "configs/debug/eqar_debug.yaml"


def _setup(*over):
    """Debug recipe model with a random flow-head output (the released init zeroes it) and its settings."""
    cfg = load_config(DEBUG, list(over))
    torch.manual_seed(0)
    model, fam = build_model(cfg)
    model.eval()
    with torch.no_grad():
        for p in model.diffloss.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model, fam, fam.sampling.settings(cfg, model)


def _tokenizer():
    torch.manual_seed(1)
    return ColumnTokenizer(build_column_autoencoder("debug"))


def _gens(rows=2, seed=3):
    return row_generators(seed, range(rows))


LABELS = torch.tensor([1, 6])


@pytest.mark.parametrize("over", [[], ["sample.cfg=1.0"], ["sample.use_cache=false"]])
def test_nothing_kept_is_sample_and_a_sampled_prefix_gives_sample_back(over):
    model, fam, st = _setup(*over)
    plain = fam.sampling.sample(model, LABELS, _gens(), st, size=(16, 32))
    none = torch.zeros(2, 8, dtype=torch.bool)
    assert torch.equal(fam.sampling.edit(model, torch.randn(2, 8, 16), none, LABELS, _gens(), st, size=(16, 32)), plain)
    # teacher forcing: kept columns that the sampler itself made leave the continuation as it was (same noise per
    # position), kept columns of another image change it
    keep = torch.zeros(2, 8, dtype=torch.bool)
    keep[0, :3], keep[1, :5] = True, True
    again = fam.sampling.edit(model, plain, keep, LABELS, _gens(), st)
    torch.testing.assert_close(again, plain, rtol=1e-5, atol=1e-5)
    other = torch.randn(2, 8, 16, generator=torch.Generator().manual_seed(9))
    out = fam.sampling.edit(model, other, keep, LABELS, _gens(), st)
    assert torch.equal(out[keep], other[keep]) and not torch.allclose(out[~keep], plain[~keep])
    assert torch.equal(fam.sampling.edit(model, other, torch.ones_like(keep), LABELS, _gens(), st), other)


def test_ultra_long_continuation_of_an_encoded_image():
    """The column tokenizer's encode of a real-size image is the prefix; the canvas is 10x its width."""
    model, fam, st = _setup()
    tok = _tokenizer()
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    enc = tok.encode(images)
    assert enc.shape == (2, 4, 16)  # one 16-d token per 4-pixel column, left to right
    n = 40
    known = torch.zeros(2, n, 16)
    known[:, :4] = enc
    keep = torch.zeros(2, n, dtype=torch.bool)
    keep[:, :4] = True
    out = fam.sampling.edit(model, known, keep, LABELS, _gens(), st, size=(16, 4 * n))
    assert out.shape == (2, n, 16) and torch.isfinite(out).all() and torch.equal(out[:, :4], enc)
    assert tok.decode(out).shape == (2, 3, 16, 4 * n)
    full = fam.sampling.edit(model, known, keep, LABELS, _gens(), replace(st, sampler=replace(st.sampler, use_cache=False)))
    torch.testing.assert_close(full, out, rtol=1e-4, atol=1e-4)  # the windowed cache is the full recomputation
    alone = fam.sampling.edit(model, known[1:], keep[1:], LABELS[1:], _gens()[1:], st)
    torch.testing.assert_close(alone[0], out[1], rtol=1e-5, atol=1e-5)  # row 1 is a function of its generator


def test_left_extension_is_the_mirrored_right_extension():
    model, fam, st = _setup()
    assert st.hflip  # the recipes train with flips, as the release
    tok = _tokenizer()
    images = torch.rand(2, 3, 16, 12) * 2 - 1
    n = 7
    known = torch.zeros(2, n, 16)
    known[:, 4:] = tok.encode(images)
    keep = torch.zeros(2, n, dtype=torch.bool)
    keep[:, 4:] = True
    out = fam.sampling.edit(model, known, keep, LABELS, _gens(), st, tokenizer=tok)
    assert torch.equal(out[:, 4:], known[:, 4:])
    mirrored = torch.zeros(2, n, 16)
    mirrored[:, :3] = tok.encode(tok.decode(known[:, 4:]).flip(-1))  # edit gets latents: it decodes to flip
    right = fam.sampling.edit(model, mirrored, keep.flip(-1), LABELS, _gens(), st)
    want = tok.encode(tok.decode(right).flip(-1))
    torch.testing.assert_close(out[:, :4], want[:, :4], rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="pass tokenizer="):
        fam.sampling.edit(model, known, keep, LABELS, _gens(), st)
    with pytest.raises(ValueError, match=r"not trained with horizontal flips \(data.hflip=false\)"):
        _, _, st_noflip = _setup("data.hflip=false")
        fam.sampling.edit(model, known, keep, LABELS, _gens(), st_noflip, tokenizer=tok)


def test_keep_must_be_a_run_of_columns_at_one_end():
    model, fam, st = _setup()
    keep = torch.zeros(2, 6, dtype=torch.bool)
    keep[1, 2:4] = True
    with pytest.raises(ValueError, match="keep row 1 is not a run of columns at one end"):
        fam.sampling.edit(model, torch.zeros(2, 6, 16), keep, LABELS, _gens(), st)
    with pytest.raises(ValueError, match="keep must be Bool"):
        fam.sampling.edit(model, torch.zeros(2, 6, 16), keep.long(), LABELS, _gens(), st)
    with pytest.raises(ValueError, match="disagrees with known's 6 columns"):
        fam.sampling.edit(model, torch.zeros(2, 6, 16), keep, LABELS, _gens(), st, size=(16, 28))
    with pytest.raises(ValueError, match="sample.rng must be per_row"):
        cfg = load_config(DEBUG, ["sample.rng=official", "eval.n=10"])
        fam.sampling.edit(model, torch.zeros(2, 6, 16), keep, LABELS, _gens(), fam.sampling.settings(cfg, model))
