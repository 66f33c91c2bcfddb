"""Inception Score: per-split values, both std conventions, torch-fidelity's seeded shuffle, the Evaluator wiring."""
import numpy as np
import pytest
import torch
from scipy.special import softmax
from scipy.stats import entropy

from metrics.evaluator import Evaluator
from metrics.formulas import TORCH_FIDELITY_SHUFFLE_SEED, inception_score, inception_score_splits
from metrics.inception import FIDInception


def restated_splits(logits, splits):
    """IS per contiguous split, from scipy's softmax and KL divergence (entropy(p, q))."""
    p = softmax(np.asarray(logits, dtype=np.float64), axis=1)
    bounds = [k * len(p) // splits for k in range(splits + 1)]
    return [float(np.exp(np.mean([entropy(row, p[a:b].mean(0)) for row in p[a:b]])))
            for a, b in zip(bounds[:-1], bounds[1:])]


@pytest.fixture(scope="module")
def logits():
    return (np.random.default_rng(3).standard_normal((57, 30)) * 4).astype(np.float32)


def test_per_split_values_and_both_std_conventions(logits):
    want = restated_splits(logits, 5)
    r0 = inception_score_splits(logits, 5)
    r1 = inception_score_splits(logits, 5, ddof=1)
    np.testing.assert_allclose(r0["is_splits"], want, rtol=1e-10)
    assert r0["is"] == pytest.approx(np.mean(want), rel=1e-10)
    assert r0["is_std"] == pytest.approx(np.std(want), rel=1e-8)  # torch-fidelity (np.std)
    torch_std = torch.tensor(want, dtype=torch.float64).std().item()  # torchmetrics (torch.std, unbiased)
    assert r1["is_std"] == pytest.approx(torch_std, rel=1e-8)
    assert r1["is_std"] > r0["is_std"] and r1["is_splits"] == r0["is_splits"]
    assert inception_score(logits, 5) == (r0["is"], r0["is_std"])  # the tuple API is unchanged
    assert inception_score(torch.from_numpy(logits), 5, ddof=1) == (r1["is"], r1["is_std"])


def test_torch_fidelity_shuffle(logits):
    # numpy's legacy generator is frozen by its stream-compatibility policy: this is the permutation for N = 8
    assert np.random.RandomState(2020).permutation(8).tolist() == [6, 2, 1, 4, 5, 3, 7, 0]
    assert TORCH_FIDELITY_SHUFFLE_SEED == 2020
    perm = np.random.RandomState(2020).permutation(len(logits))
    want = restated_splits(logits[perm], 5)
    got = inception_score_splits(logits, 5, shuffle=True)
    np.testing.assert_allclose(got["is_splits"], want, rtol=1e-10)
    assert inception_score_splits(logits, 5, shuffle=2020) == got
    other = inception_score_splits(logits, 5, shuffle=7)
    np.testing.assert_allclose(other["is_splits"],
                               restated_splits(logits[np.random.RandomState(7).permutation(len(logits))], 5),
                               rtol=1e-10)
    assert got["is_splits"] != inception_score_splits(logits, 5)["is_splits"]  # the shuffle changes the splits
    for bad in ({"ddof": 2}, {"shuffle": "yes"}, {"shuffle": -1}, {"ddof": 1, "splits": 1}):
        with pytest.raises(ValueError):
            inception_score_splits(logits, **dict({"splits": 5}, **bad))


def test_evaluator_passes_is_settings():
    torch.manual_seed(0)
    model = FIDInception().eval()
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(7, 3, 24, 24, generator=g) * torch.rand(7, 1, 1, 1, generator=g) * 255).to(torch.uint8)
    ev = Evaluator(model, mode="adm", want=["is"], size=75, batch_size=4, is_splits=3, is_std_ddof=1,
                   is_shuffle=True)
    ev.update(x)
    got = ev.compute()
    logits = ev.collector.gather()["logits"].numpy()
    want = restated_splits(logits[np.random.RandomState(2020).permutation(7)], 3)
    np.testing.assert_allclose(got["is_splits"], want, rtol=1e-8)
    assert got["is"] == pytest.approx(np.mean(want), rel=1e-8)
    assert got["is_std"] == pytest.approx(np.std(want, ddof=1), rel=1e-6)
    with pytest.raises(ValueError, match="ddof"):
        Evaluator(model, mode="adm", want=["is"], size=75, is_std_ddof=3)
