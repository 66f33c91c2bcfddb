"""`rng=OfficialStream(seed, variant)`: the sampler replays the official single-process random stream.

Each reference below is a short re-statement of the official generation loop as the spec describes it (section 4.1
AutoNAT, 4.2 ENAT), written against the GLOBAL generators seeded with `torch.manual_seed(s); np.random.seed(s)`, with
two separate forwards for guidance, exactly as the official code runs. The sampler under test uses its own
generators, one batched guidance forward and (ENAT) the ReuseModelFn state; the tokens must be equal.
"""
import math

import numpy as np
import pytest
import torch

from models.enat.model import FLAVOURS as ENAT_FLAVOURS
from models.enat.reuse import ReuseModelFn
from models.nat.model import FLAVOURS as NAT_FLAVOURS
from samplers import OfficialStream, Strategy, mask_predict_sample, row_generators

RELEASED = Strategy.from_yaml("configs/AutoNAT_L-T8_strategy.yaml")
ENAT_256 = dict(steps=8, cfg_scale=2.5, mask_temp=1.5, samp_temp=6.0)  # the released 256-px flags


def randomized(model, seed, std):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model.eval()


def global_seed(seed):
    torch.manual_seed(seed)
    np.random.seed(seed)


def official_autonat(nnet, labels, strategy, seq_len, mask_id, null):
    """AutoNAT: per step categorical draw on the guided logits / max(τs, 1e-4), log-softmax confidence, +inf where
    visible, τg·Gumbel from numpy (τg = 0 and ratio = 0 at the last step), row 0's clamped count, re-mask conf <= the
    cut-off; the result is the last step's sampled ids."""
    b, steps = len(labels), strategy.steps
    ids = torch.full((b, seq_len), mask_id, dtype=torch.long)
    for step in range(steps):
        ratio = strategy.ratios[step] if step < steps - 1 else 0
        tau_g = strategy.mask_temp[step] if step < steps - 1 else 0
        is_mask = ids == mask_id
        cond = nnet(ids, labels)
        uncond = nnet(ids, torch.full_like(labels, null))
        logits = cond + strategy.cfg[step] * (cond - uncond)
        sampled = torch.distributions.Categorical(logits=logits / max(strategy.samp_temp[step], 1e-4)).sample()
        conf = torch.log_softmax(logits, dim=-1).gather(-1, sampled[..., None])[..., 0]
        sampled = torch.where(is_mask, sampled, ids)
        conf = torch.where(is_mask, conf, torch.tensor(float("inf"))).float()
        n = max(1, min(int(is_mask[0].sum()) - 1, math.floor(seq_len * ratio)))
        conf = conf + torch.Tensor(tau_g * np.random.gumbel(size=tuple(conf.shape)))
        cut = conf.sort(dim=-1).values[:, n - 1:n]
        ids = torch.where(conf <= cut, mask_id, sampled)
    return sampled


def official_enat(model, labels, steps, cfg_scale, mask_temp, samp_temp, null):
    """ENAT: cond and uncond passes with their own reuse state; guidance (s/T)·cfg; log-softmax, categorical draw on
    logp / max(τs(1−ρ), 1e-3); confidence logp + τg(1−ρ)·Gumbel; mask the floor(L·cos(πρ/2)) lowest."""
    b, seq_len, mask_id = len(labels), model.seq_len, model.mask_id
    ids = torch.full((b, seq_len), mask_id, dtype=torch.long)
    null_labels = torch.full_like(labels, null)
    cond_state = uncond_state = None
    scale = 0.0
    for step in range(steps):
        rho = 1.0 * (step + 1) / steps
        n_masked = math.floor(seq_len * np.cos(rho * math.pi * 0.5))
        tau_g, tau_s = mask_temp * (1 - rho), max(samp_temp * (1 - rho), 1e-3)
        cond, cond_state = model(ids, labels, prev=cond_state, return_state=True)
        uncond, uncond_state = model(ids, null_labels, prev=uncond_state, return_state=True)
        logp = torch.log_softmax(cond + scale * (cond - uncond), dim=-1)
        is_mask = ids == mask_id
        sampled = torch.where(is_mask, torch.distributions.Categorical(logits=logp / tau_s).sample(), ids)
        conf = torch.where(is_mask, logp.gather(-1, sampled[..., None])[..., 0], torch.tensor(float("inf"))).float()
        conf = conf + torch.Tensor(tau_g * np.random.gumbel(size=tuple(conf.shape)))
        lowest = conf.argsort(dim=-1)[:, :n_masked]
        ids = torch.where(torch.zeros_like(is_mask).scatter_(1, lowest, True), mask_id, sampled)
        scale = rho * cfg_scale
    return sampled


def test_own_generators_reproduce_the_global_streams():
    seed = 1234
    logits = torch.randn(3, 5, 9, generator=torch.Generator().manual_seed(0)) * 2
    global_seed(seed)
    want_labels = torch.randint(0, 1000, (4, 1))[:, 0]
    want_tokens = torch.distributions.Categorical(logits=logits / 0.7).sample()
    want_noise = torch.Tensor(1.3 * np.random.gumbel(size=(3, 5)))
    want_enat = torch.distributions.Categorical(logits=torch.log_softmax(logits, -1) / 0.7).sample()
    rng, enat = OfficialStream(seed), OfficialStream(seed, variant="enat")
    assert torch.equal(rng.labels(4, 1000), want_labels)
    assert torch.equal(rng.tokens(logits, 0.7), want_tokens)
    assert torch.equal(rng.gumbel(1.3, (3, 5), "cpu"), want_noise)
    enat.labels(4, 1000)  # bring the ENAT stream to the same point of the torch sequence
    enat.tokens(logits, 0.7)
    assert torch.equal(enat.tokens(logits, 0.7), want_enat)
    assert rng.gumbel(0.0, (2, 3), "cpu").dtype == torch.float32
    # why the variant exists: the two official sampling-logit forms give other float32 probabilities (ulp level),
    # which can move a multinomial draw across a bin edge
    p_autonat = torch.distributions.Categorical(logits=logits / 0.7).probs
    p_enat = torch.distributions.Categorical(logits=torch.log_softmax(logits, -1) / 0.7).probs
    assert not torch.equal(p_autonat, p_enat)
    torch.testing.assert_close(p_autonat, p_enat)
    with pytest.raises(ValueError, match="variant"):
        OfficialStream(0, variant="maskgit")
    assert (OfficialStream.for_family("nat", 3).variant, OfficialStream.for_family("enat", 3).variant) == (
        "autonat", "enat")
    with pytest.raises(ValueError, match="family 'nit'"):
        OfficialStream.for_family("nit", 3)


def test_autonat_variant_replays_the_official_loop_token_for_token():
    model = randomized(NAT_FLAVOURS["debug"](), seed=0, std=0.25)
    seq, mask_id, null = model.seq_len, model.mask_id, model.null_label
    seed, batches = 1234, 2
    global_seed(seed)
    want = []
    with torch.no_grad():
        for _ in range(batches):  # the official eval loop: labels of a batch, then its generation, same streams
            labels = torch.randint(0, null, (3, 1))[:, 0]
            want.append((labels, official_autonat(model, labels, RELEASED, seq, mask_id, null)))
    rng = OfficialStream(seed)
    for labels_ref, tokens_ref in want:
        labels = rng.labels(3, null)
        assert torch.equal(labels, labels_ref)
        got = mask_predict_sample(model, labels, seq_len=seq, codebook_size=model.codebook_size, strategy=RELEASED,
                                  null_label=null, rule="ties", rng=rng)
        assert torch.equal(got, tokens_ref)
    assert len({tuple(t.flatten().tolist()) for _, t in want}) == batches  # the stream moved on
    # the per-row default is a different stream (and a sanity check that the comparison can fail)
    per_row = mask_predict_sample(model, want[0][0], row_generators(seed, range(3)), seq_len=seq,
                                  codebook_size=model.codebook_size, strategy=RELEASED, null_label=null)
    assert not torch.equal(per_row, want[0][1])


def test_enat_variant_with_reuse_replays_the_official_loop_token_for_token():
    model = randomized(ENAT_FLAVOURS["debug"](), seed=1, std=0.3)
    null, seed = model.null_label, 7
    labels = torch.tensor([0, 3, 9, 3])
    global_seed(seed)
    with torch.no_grad():
        want = [official_enat(model, labels, null=null, **ENAT_256) for _ in range(2)]
    rng = OfficialStream(seed, variant="enat")
    strategy = Strategy.enat_cosine(**ENAT_256)
    fn = ReuseModelFn(model)
    for ref in want:
        got = mask_predict_sample(fn, labels, seq_len=model.seq_len, codebook_size=model.codebook_size,
                                  strategy=strategy, null_label=null, rule="exact", rng=rng)
        assert torch.equal(got, ref)
    assert not torch.equal(want[0], want[1])


def test_gumbel_is_drawn_at_the_last_step_too():
    """B·L numpy draws per step, T steps: the next draw of the stream is the (B·L·T + 1)-th."""
    model = randomized(NAT_FLAVOURS["debug"](), seed=2, std=0.25)
    rng = OfficialStream(5)
    labels = torch.tensor([1, 2])
    mask_predict_sample(model, labels, seq_len=model.seq_len, codebook_size=model.codebook_size, strategy=RELEASED,
                        null_label=model.null_label, rng=rng)
    ref = np.random.RandomState(5)
    ref.gumbel(size=(2 * model.seq_len * RELEASED.steps,))
    assert rng.numpy.gumbel() == ref.gumbel()


def test_generators_and_rng_are_exclusive():
    model = NAT_FLAVOURS["debug"]().eval()
    kw = dict(seq_len=model.seq_len, codebook_size=model.codebook_size, strategy=RELEASED)
    labels = torch.tensor([1])
    with pytest.raises(ValueError, match="not both"):
        mask_predict_sample(model, labels, row_generators(0, [0]), rng=OfficialStream(0), **kw)
    with pytest.raises(TypeError, match="OfficialStream"):
        mask_predict_sample(model, labels, rng=torch.Generator(), **kw)
    with pytest.raises(ValueError, match="one torch.Generator per row"):
        mask_predict_sample(model, labels, **kw)
