"""--mode search with injected objectives: exact finite differences and momentum on a quadratic, outputs, common
random numbers, resume after a crash, budget stop; the SPSA estimator."""
import csv
import json

import numpy as np
import pytest

from engine.config import load_config
from engine.search import (STATE_FILE, Hyper, evaluation_seed, momentum_step, probe_point, search,
                           spsa_directions, spsa_gradient)
from models.nat.family import nat_search_space
from samplers.strategy_search import vector_names
from samplers.strategy import Strategy

STEPS = 2  # 6 scalars: ratios[1], mask_temp[1], samp_temp[2], cfg[2]


def _cfg(out, *extra):
    return load_config("configs/debug/autonat_debug.yaml",
                       [f"output_dir={out}", f"sample.gen_steps={STEPS}", "search.init=maskgit", "search.eval_n=4",
                        "device=cpu", *extra])


class Quadratic:
    """f(x) = sum w (x - c)^2; records (vector, seed) of every call."""

    def __init__(self, w, c):
        self.w, self.c, self.calls = np.asarray(w, float), np.asarray(c, float), []

    def __call__(self, strategy, seed):
        x = np.asarray(strategy.to_vector())
        self.calls.append((x, seed))
        return float(np.sum(self.w * (x - self.c) ** 2))


def _history(out):
    with open(out / "search_history.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_gradient_and_momentum_are_exact_on_a_quadratic(tmp_path):
    w = np.array([3.0, 0.5, 2.0, 1.0, 0.7, 1.5])
    c = np.array([0.2, 0.4, 0.8, 1.3, 0.6, 1.8])
    f = Quadratic(w, c)
    res = search(_cfg(tmp_path, "search.max_upd=2"), objective=f)
    d = 4 * STEPS - 2
    assert len(f.calls) == (1 + d) * 2 + 1 and res["update"] == 2 and res["stopped"] == "max_upd"
    assert res["images"] == 4 * len(f.calls)

    cfg = _cfg(tmp_path)
    hp = Hyper.from_space(nat_search_space(cfg), cfg.search)
    assert hp.space.is_ratio.tolist() == [True] + [False] * 5
    assert hp.fd_step.tolist() == [0.01] + [0.1] * 5 and hp.lr.tolist() == [1e-3] + [0.1] * 5
    x = np.array(Strategy.maskgit_init(STEPS).to_vector())
    v = np.zeros(d)
    for upd in range(2):
        # forward difference of a quadratic: 2 w (x - c) + w h, exactly (up to round-off)
        g = 2 * w * (x - c) + w * hp.fd_step
        probes = [a for a, _ in f.calls[upd * (d + 1) + 1:(upd + 1) * (d + 1)]]
        for j, xp in enumerate(probes):
            assert np.allclose(xp, probe_point(x, j, hp)) and xp[j] == pytest.approx(x[j] + hp.fd_step[j])
        v = 0.5 * v + g                      # torch.optim.SGD momentum 0.5, dampening 0
        x_new = x - hp.lr * v
        x_new[0] = min(max(x_new[0], 0.0), 0.99)
        x_new[1:] = np.maximum(x_new[1:], 1e-4)
        x = x_new
        np.testing.assert_allclose(f.calls[(upd + 1) * (d + 1)][0], x, rtol=1e-10, atol=1e-12)
    state = json.loads((tmp_path / STATE_FILE).read_text())
    np.testing.assert_allclose(state["momentum"], v, rtol=1e-10)

    rows = _history(tmp_path)
    names = vector_names(STEPS)
    assert [int(r["update"]) for r in rows] == [0, 1, 2]
    fids = [float(r["fid"]) for r in rows]
    assert fids[1] < fids[0] and fids[2] < fids[1]  # descent on a convex bowl with these learning rates
    assert [float(r["best_fid"]) for r in rows] == [min(fids[:i + 1]) for i in range(3)]
    np.testing.assert_allclose([float(rows[2][n]) for n in names], x, rtol=1e-12)
    for k in range(3):
        s = Strategy.from_yaml(tmp_path / "searched_strategies" / f"stp_{k}.yaml", gen_steps=STEPS)
        np.testing.assert_allclose(s.to_vector(), [float(rows[k][n]) for n in names], rtol=1e-12)
    best = Strategy.from_yaml(tmp_path / "searched_strategies" / "best.yaml")
    np.testing.assert_allclose(best.to_vector(), x, rtol=1e-12)
    assert set(json.loads((tmp_path / STATE_FILE).read_text())) >= {"update", "x", "momentum", "images"}


def test_clamping_and_gradient_clip():
    cfg = load_config("configs/debug/autonat_debug.yaml", [f"sample.gen_steps={STEPS}", "search.clip_grad=2"])
    hp = Hyper.from_space(nat_search_space(cfg), cfg.search)
    x = np.array([0.99, 1e-4, 1.0, 1.0, 0.5, 1.0])
    xp = probe_point(x, 0, hp)
    assert 0.99 < xp[0] < 1.0  # a probe past the ratio range stays a valid strategy
    Strategy.from_vector(xp, STEPS, clip=False)
    x1, v1 = momentum_step(x, np.zeros(6), np.array([-1e4, 1e4, 0, 0, 0, 0.5]), hp)
    assert v1.tolist() == [-2.0, 2.0, 0, 0, 0, 0.5]  # elementwise clamp to +-clip_grad
    assert x1[0] == 0.99 and x1[1] == 1e-4 and x1[5] == pytest.approx(1.0 - 0.1 * 0.5)


def test_common_random_numbers_per_update(tmp_path):
    f = Quadratic(np.ones(6), np.zeros(6))
    search(_cfg(tmp_path / "crn", "search.max_upd=2"), objective=f)
    per_update = [{s for _, s in f.calls[u * 7:(u + 1) * 7]} for u in range(2)]
    assert all(len(s) == 1 for s in per_update) and per_update[0] != per_update[1]
    assert per_update[0] == {evaluation_seed(1234, 0)}
    g = Quadratic(np.ones(6), np.zeros(6))
    search(_cfg(tmp_path / "iid", "search.max_upd=2", "search.common_random_numbers=false"), objective=g)
    assert len({s for _, s in g.calls}) == len(g.calls)


class Crash(Exception):
    pass


@pytest.mark.parametrize("grad", [(), ("search.gradient=spsa", "search.spsa_pairs=3")], ids=["fd", "spsa"])
@pytest.mark.parametrize("crash_at", [12, 14])  # inside update 1's gradient; update 2's base evaluation
def test_resume_after_crash_continues_identically(tmp_path, crash_at, grad):  # 7 evaluations per update either way
    noisy = lambda: Quadratic([1.0, 2.0, 0.5, 1.0, 3.0, 1.0], [0.5, 0.1, 0.9, 1.1, 0.3, 0.7])  # noqa: E731

    class Noisy(Quadratic):  # depends on the seed, so a wrong seed after resuming would show
        def __call__(self, strategy, seed):
            return super().__call__(strategy, seed) + (seed % 1000) * 1e-4

    full = Noisy(noisy().w, noisy().c)
    search(_cfg(tmp_path / "a", "search.max_upd=3", *grad), objective=full)

    class Dies(Noisy):
        def __call__(self, strategy, seed):
            if len(self.calls) == crash_at:
                raise Crash()
            return super().__call__(strategy, seed)

    with pytest.raises(Crash):
        search(_cfg(tmp_path / "b", "search.max_upd=3", *grad), objective=Dies(full.w, full.c))
    rest = Noisy(full.w, full.c)
    search(_cfg(tmp_path / "b", "search.max_upd=3", *grad), objective=rest)
    # finished work is not repeated: update 0 (base + 6 probes), then update 1's base or whole update 1
    done = 8 if crash_at == 12 else 14
    assert len(rest.calls) == len(full.calls) - done
    for a, b in zip(full.calls[done:], rest.calls):
        np.testing.assert_array_equal(a[0], b[0])
        assert a[1] == b[1]
    ha, hb = _history(tmp_path / "a"), _history(tmp_path / "b")
    strip = lambda rows: [{k: v for k, v in r.items() if k != "seconds"} for r in rows]  # noqa: E731
    assert strip(ha) == strip(hb) and len(ha) == 4
    sa = json.loads((tmp_path / "a" / STATE_FILE).read_text())
    sb = json.loads((tmp_path / "b" / STATE_FILE).read_text())
    for k in ("update", "x", "momentum", "fid", "best_fid", "best_update", "images"):
        assert sa[k] == sb[k], k
    # a finished search re-run does nothing; a larger max_upd continues
    again = Noisy(full.w, full.c)
    search(_cfg(tmp_path / "b", "search.max_upd=3", *grad), objective=again)
    assert again.calls == []
    with pytest.raises(ValueError, match="started with eval_n=4"):
        search(_cfg(tmp_path / "b", "search.max_upd=3", "search.eval_n=8", *grad), objective=again)


def test_budget_stops_before_an_update_that_would_not_fit(tmp_path):
    f = Quadratic(np.ones(6), np.zeros(6))
    # base (4) + gradient (6 x 4) + next base (4) = 32 fits once; the second gradient would pass 40
    res = search(_cfg(tmp_path, "search.max_upd=10", "search.budget_images=40"), objective=f)
    assert res["stopped"] == "budget" and res["update"] == 1 and res["images"] == 32 and len(f.calls) == 8
    assert [int(r["update"]) for r in _history(tmp_path)] == [0, 1]
    with pytest.raises(ValueError, match="smaller than one evaluation"):
        search(_cfg(tmp_path / "tiny", "search.budget_images=3"), objective=f)


def test_spsa_estimate_is_unbiased_and_exact_per_pair_on_a_linear_function():
    cfg = load_config("configs/debug/autonat_debug.yaml", [f"sample.gen_steps={STEPS}"])
    hp = Hyper.from_space(nat_search_space(cfg), cfg.search)
    x = np.array(Strategy.maskgit_init(STEPS).to_vector())
    g_true = np.array([4.0, -1.0, 2.0, 0.5, -3.0, 1.5])
    f = lambda xp, j: float(g_true @ xp)  # noqa: E731
    one = spsa_directions(7, 0, 1, 6)
    g1 = spsa_gradient(f, x, one, hp)
    # one pair: true component j plus cross-talk sum_{i != j} g_i h_i D_i / (h_j D_j)
    h = hp.fd_step
    expect = np.array([(g_true * h * one[0]).sum() / (h[j] * one[0, j]) for j in range(6)])
    np.testing.assert_allclose(g1, expect, rtol=1e-9)
    many = spsa_directions(7, 0, 4000, 6)
    assert set(np.unique(many)) == {-1.0, 1.0}
    np.testing.assert_array_equal(many[:1], one)  # a function of (seed, update): a resume redraws the same
    assert not np.array_equal(spsa_directions(7, 1, 1, 6), one)
    gm = spsa_gradient(f, x, many, hp)
    err = np.abs(gm - g_true) / np.sqrt(((g_true * h) ** 2).sum() / h ** 2 / 4000)
    assert err.max() < 5  # within 5 standard errors of the cross-talk noise


def test_spsa_search_descends_and_counts_evaluations(tmp_path):
    w = np.array([3.0, 0.5, 2.0, 1.0, 0.7, 1.5])
    c = np.array([0.2, 0.4, 0.8, 1.3, 0.6, 1.8])
    f = Quadratic(w, c)
    res = search(_cfg(tmp_path, "search.max_upd=6", "search.gradient=spsa", "search.spsa_pairs=3",
                      "search.lr_other=0.05", "search.lr_ratio=0.01"), objective=f)
    assert len(f.calls) == (1 + 6) * 6 + 1 and res["images"] == 4 * len(f.calls)
    seeds = [s for _, s in f.calls]
    assert len(set(seeds[:7])) == 1 and seeds[7] != seeds[0]  # common random numbers within an update
    fids = [float(r["fid"]) for r in _history(tmp_path)]
    assert fids[-1] < fids[0]
    # the budget counts 2 x pairs evaluations per gradient: base 4 + 6 x 4 + base 4 = 32 <= 40 < 60
    g = Quadratic(w, c)
    res = search(_cfg(tmp_path / "b", "search.max_upd=10", "search.gradient=spsa", "search.spsa_pairs=3",
                      "search.budget_images=40"), objective=g)
    assert res["update"] == 1 and res["images"] == 32
    with pytest.raises(ValueError, match="started with gradient='spsa'"):
        search(_cfg(tmp_path / "b", "search.max_upd=10", "search.budget_images=40"), objective=g)
    with pytest.raises(ValueError, match="search.gradient'? must be one of"):
        search(_cfg(tmp_path / "c", "search.gradient=sgd"), objective=g)
