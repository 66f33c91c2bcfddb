import pytest
import torch

from models.family import TrainContext
from models.nat.model import FLAVOURS
from models.nat.family import nat_training_loss
from samplers import ClassifierFreeGuidance, Strategy, combine, mask_predict_sample, row_generators
from samplers.mask_predict import inverse_cdf_sample

RELEASED = Strategy.from_yaml("configs/AutoNAT_L-T8_strategy.yaml")




class ToyModel:
    """Row-wise model function (no batched matmul, so rows are bit-identical whatever the batch).

    Records, per call, the number of masked inputs of every row; counts reset() calls.
    """

    def __init__(self, seq_len, v, num_labels=4, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(num_labels, seq_len, v, generator=g) * 2.0
        self.mix = torch.randn(v + 1, v, generator=g)
        self.mask_id = v
        self.masked_counts, self.resets = [], 0

    def reset(self):
        self.resets += 1
        self.masked_counts.clear()

    def __call__(self, ids, labels):
        self.masked_counts.append((ids == self.mask_id).sum(1).tolist())
        # depends on the row's own ids: the mean embedding of its inputs shifts every position's logits
        return self.table[labels] + self.mix[ids].mean(1, keepdim=True)


def _sample(model, labels, seed=0, indices=None, **kw):
    indices = range(len(labels)) if indices is None else indices
    kw.setdefault("strategy", RELEASED)
    return mask_predict_sample(model, labels, row_generators(seed, indices), seq_len=model.table.shape[1],
                               codebook_size=model.mask_id, **kw)


@pytest.mark.parametrize("rule", ["ties", "exact"])
def test_row_depends_only_on_its_generator_label_and_model(rule):
    model = ToyModel(seq_len=36, v=10)
    labels = torch.tensor([2, 0, 1, 3, 2])
    batch = _sample(model, labels, seed=7, rule=rule, null_label=3)
    for i in (0, 3):
        alone = _sample(model, labels[i:i + 1], seed=7, indices=[i], rule=rule, null_label=3)
        assert torch.equal(alone[0], batch[i])
    assert not torch.equal(batch[0], batch[4])  # same label, different streams
    assert batch.dtype == torch.long and batch.shape == (5, 36)
    assert batch.min() >= 0 and batch.max() < 10


def test_masked_counts_follow_the_released_strategy_at_16x16():
    model = ToyModel(seq_len=256, v=12)
    labels = torch.tensor([0, 1, 2])
    out = _sample(model, labels, null_label=3)
    assert model.resets == 1  # forwarded through the guidance wrapper
    # one batched forward per step holding the conditional and the unconditional rows
    assert [len(c) for c in model.masked_counts] == [6] * 8
    expected = [256, 244, 225, 203, 190, 159, 104, 66]
    assert [c[0] for c in model.masked_counts] == expected
    assert all(c == [n] * 6 for c, n in zip(model.masked_counts, expected))
    assert out.min() >= 0 and out.max() < 12


def test_any_grid_any_steps_exact_rule_keeps_equal_counts():
    model = ToyModel(seq_len=64, v=5)
    strategy = Strategy.enat_cosine(5, cfg_scale=2.0, mask_temp=1.5, samp_temp=3.0)
    out = _sample(model, torch.tensor([0, 1, 2, 3]), strategy=strategy, rule="exact", null_label=3,
                  min_temp=1e-3)
    expected = [64] + strategy.masked_after(64)[:-1]
    assert [c for c in model.masked_counts] == [[n] * 8 for n in expected]
    assert (out != 5).all()


def test_ties_rule_versus_exact_rule():
    # identical logits at every position and no Gumbel noise: all masked confidences tie
    class Flat:
        mask_id = 4

        def __init__(self):
            self.masked_counts = []

        def __call__(self, ids, labels):
            self.masked_counts.append((ids == 4).sum(1).tolist())
            logits = torch.zeros(ids.shape[0], ids.shape[1], 4)
            logits[..., 2] = 50.0
            return logits

    strategy = Strategy(ratios=[0.75, 0.5, 0.25], mask_temp=[0, 0, 0], samp_temp=[1, 1, 1, 1], cfg=[0] * 4)
    counts = {}
    for rule in ("ties", "exact"):
        fn = Flat()
        out = mask_predict_sample(fn, torch.tensor([0, 1]), row_generators(0, [0, 1]), seq_len=16, codebook_size=4,
                                  strategy=strategy, rule=rule)
        assert torch.equal(out, torch.full((2, 16), 2))
        counts[rule] = [c[0] for c in fn.masked_counts]
    assert counts["ties"] == [16, 16, 16, 16]  # conf <= cutoff re-masks every tied position
    assert counts["exact"] == [16, 12, 8, 4]


def test_draws_per_row_per_step_are_documented_count():
    model = ToyModel(seq_len=9, v=6)
    gens = row_generators(3, [0, 1])
    mask_predict_sample(model, torch.tensor([0, 1]), gens, seq_len=9, codebook_size=6, strategy=RELEASED)
    reference = row_generators(3, [0, 1])
    for g in reference:
        for _ in range(RELEASED.steps):
            torch.rand((2, 9), generator=g)
    for g, ref in zip(gens, reference):
        assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=ref))


def test_guidance_batched_equals_two_separate_forwards():
    torch.manual_seed(0)
    model = FLAVOURS["debug"]().eval()
    ids = torch.randint(0, 17, (3, 16))
    labels = torch.tensor([1, 5, 9])
    calls = []

    def counting(i, y):
        calls.append(i.shape[0])
        return model(i, y)

    cfg = ClassifierFreeGuidance(counting, null_label=model.null_label)
    with torch.no_grad():
        guided = cfg(ids, labels, 1 + 1.5)  # w = 1 + s
        cond = model(ids, labels)
        uncond = model(ids, torch.full_like(labels, model.null_label))
    assert calls == [6]
    torch.testing.assert_close(guided, cond + 1.5 * (cond - uncond), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(combine(cond, uncond, 1.0), cond)


def test_no_guidance_is_one_forward_of_B_rows():
    model = ToyModel(seq_len=16, v=6)
    strategy = Strategy.maskgit_init(4)
    _sample(model, torch.tensor([0, 1]), strategy=strategy)
    assert [len(c) for c in model.masked_counts] == [2] * 4


def test_inverse_cdf_sampling_matches_the_distribution():
    probs = torch.tensor([0.1, 0.0, 0.6, 0.3])
    u = torch.rand(20000, generator=torch.Generator().manual_seed(0))
    idx = inverse_cdf_sample(probs.log().expand(20000, 4), u)
    freq = torch.bincount(idx, minlength=4).float() / 20000
    assert freq[1] == 0
    torch.testing.assert_close(freq, probs, atol=0.015, rtol=0)


def test_bad_arguments_are_rejected():
    model = ToyModel(seq_len=4, v=3)
    with pytest.raises(ValueError, match="one torch.Generator per row"):
        mask_predict_sample(model, torch.tensor([0, 1]), row_generators(0, [0]), seq_len=4, codebook_size=3,
                            strategy=RELEASED)
    with pytest.raises(ValueError, match="rule"):
        _sample(model, torch.tensor([0]), rule="topk")
    with pytest.raises(ValueError, match=r"expected \[1, 5, 3\]"):
        mask_predict_sample(model, torch.tensor([0]), row_generators(0, [0]), seq_len=5, codebook_size=3,
                            strategy=RELEASED)


def test_tiny_model_overfits_class_patterns_and_the_sampler_reproduces_them():
    torch.manual_seed(0)
    model = FLAVOURS["debug"](codebook_size=8, num_classes=3, emb_dropout=0.0)
    patterns = torch.randint(0, 8, (2, 16))
    cfg = {"loss": {"label_drop": 0.1, "label_smoothing": 0.0}}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.0)
    decay = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1 - i / 200)
    for _ in range(200):
        labels = torch.randint(0, 2, (16,))
        loss, logs = nat_training_loss(model, {"tokens": patterns[labels], "label": labels}, TrainContext(cfg=cfg))
        opt.zero_grad()
        loss.backward()
        opt.step()
        decay.step()
    model.eval()
    labels = torch.tensor([0, 1, 1, 0])
    # no guidance: with 10% null-label training the unconditional branch is too weak for guidance to help
    strategy = Strategy(ratios=[0.75, 0.5, 0.25], mask_temp=[1.0, 0.5, 0.25], samp_temp=[0.05] * 4, cfg=[0.0] * 4)
    out = mask_predict_sample(model, labels, row_generators(0, range(4)), seq_len=16, codebook_size=8,
                              strategy=strategy)
    assert torch.equal(out, patterns[labels]), (logs, out, patterns[labels])
