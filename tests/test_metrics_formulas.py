"""FID / IS / precision-recall formulas against direct reference implementations."""
import warnings

import numpy as np
import pytest
import scipy.linalg
import torch

from metrics.formulas import (feature_stats, frechet_distance, frechet_distance_to_features, inception_score,
                              manifold_radii, precision_recall)


def sqrtm_fid(a, b):
    """The pytorch-fid/ADM formula: np.cov statistics and scipy.linalg.sqrtm (called without `disp`)."""
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        covmean = scipy.linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(np.real(covmean)))


@pytest.mark.parametrize("n1,n2", [(400, 300), (20, 300), (12, 9)])  # full rank, one side / both rank-deficient
def test_fid_matches_scipy_sqrtm(n1, n2):
    rng = np.random.default_rng(n1)
    d = 64
    mix = rng.standard_normal((d, d)) / 8
    a = np.maximum(rng.standard_normal((n1, d)) @ mix, 0)
    b = np.maximum(rng.standard_normal((n2, d)) @ (mix + 0.2 * rng.standard_normal((d, d)) / 8) + 0.1, 0)
    want = sqrtm_fid(a, b)
    mu1, s1 = feature_stats(a)
    mu2, s2 = feature_stats(b)
    np.testing.assert_allclose(s1, np.cov(a, rowvar=False), rtol=1e-12, atol=1e-14)
    assert abs(frechet_distance(mu1, s1, mu2, s2) - want) <= 1e-6 * want
    assert abs(frechet_distance_to_features(a, mu2, s2) - want) <= 1e-6 * want
    assert abs(frechet_distance_to_features(torch.from_numpy(a).float(), mu2, s2) - want) <= 1e-5 * want
    assert abs(frechet_distance(mu1, s1, mu1, s1)) < 1e-9 * want


def test_feature_stats_chunked_equals_numpy():
    x = np.random.default_rng(0).standard_normal((37, 5)).astype(np.float32)
    mu, sigma = feature_stats(x, chunk=8)
    np.testing.assert_allclose(mu, x.astype(np.float64).mean(0), rtol=1e-12)
    np.testing.assert_allclose(sigma, np.cov(x.astype(np.float64), rowvar=False), rtol=1e-12)
    with pytest.raises(ValueError, match="at least 2"):
        feature_stats(x[:1])


def test_fid_errors_on_dimension_mismatch_and_bad_shapes():
    mu, s = np.zeros(4), np.eye(4)
    with pytest.raises(ValueError, match="dimension 3 does not match the other side's 4"):
        frechet_distance(mu, s, np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=r"sigma \[D, D\]"):
        frechet_distance(mu, np.eye(3), mu, s)
    with pytest.raises(ValueError, match="does not match"):
        frechet_distance_to_features(np.ones((3, 5)), mu, s)


def direct_is(logits, splits):
    scores = []
    n = len(logits)
    for k in range(splits):
        part = logits[k * n // splits:(k + 1) * n // splits].astype(np.float64)
        p = np.exp(part) / np.exp(part).sum(1, keepdims=True)
        py = p.mean(0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(p * (np.log(p) - np.log(py)), 1))))
    return np.mean(scores), np.std(scores)


def test_inception_score_matches_direct_numpy():
    rng = np.random.default_rng(0)
    logits = (rng.standard_normal((103, 1008)) * 3).astype(np.float32)
    mean, std = inception_score(logits, splits=10)
    want_mean, want_std = direct_is(logits, 10)
    assert mean == pytest.approx(want_mean, rel=1e-12) and std == pytest.approx(want_std, rel=1e-9)
    # order matters (contiguous splits, no shuffle): reversing the rows changes the split contents
    assert inception_score(logits[::-1].copy(), 10)[1] != pytest.approx(std, rel=1e-6)
    # one-hot-like predictions over 4 classes, equally used -> IS = 4
    sharp = np.full((40, 4), -50.0)
    sharp[np.arange(40), np.arange(40) % 4] = 50.0
    assert inception_score(sharp, splits=2)[0] == pytest.approx(4.0, rel=1e-9)
    with pytest.raises(ValueError, match="N >= splits"):
        inception_score(logits[:5], splits=10)


def test_precision_recall_hand_checked_1d():
    ref = torch.tensor([[0.0], [1.0], [2.0], [3.0]])
    smp = torch.tensor([[6.0], [6.01], [100.0], [101.0]])
    # k=3 with self included -> 4th smallest squared distance: ref radii 9, 4, 4, 9
    assert manifold_radii(ref, 3).tolist() == [9.0, 4.0, 4.0, 9.0]
    # 6.0 is at squared distance exactly 9 from ref 3 (radius 9): counted (<=); 6.01 is not
    assert precision_recall(ref, smp) == (0.25, 1.0)
    assert precision_recall(smp, ref) == (1.0, 0.25)
    with pytest.raises(ValueError, match="at least 4 points"):
        precision_recall(ref[:3], smp)


def brute_pr(ref, smp, k=3):
    d_rr = ((ref[:, None] - ref[None]) ** 2).sum(-1)
    d_ss = ((smp[:, None] - smp[None]) ** 2).sum(-1)
    d_rs = ((ref[:, None] - smp[None]) ** 2).sum(-1)
    r_ref = np.sort(d_rr, 1)[:, k]
    r_smp = np.sort(d_ss, 1)[:, k]
    precision = (d_rs <= r_ref[:, None]).any(0).mean()
    recall = (d_rs <= r_smp[None, :]).any(1).mean()
    return precision, recall


def test_precision_recall_blocks_and_fp16_match_brute_force():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((23, 16)).astype(np.float32)
    smp = (rng.standard_normal((31, 16)) * 1.3 + 0.4).astype(np.float32)
    want = brute_pr(ref.astype(np.float64), smp.astype(np.float64))
    got = precision_recall(torch.from_numpy(ref), torch.from_numpy(smp), row_batch=7, col_batch=5)
    assert got == pytest.approx(want, abs=1e-7)
    assert 0 < want[0] < 1 and 0 < want[1] < 1
    # fp16 blocks that overflow (|x|^2 > 65504) are recomputed in float32 -> same answer as pure fp32
    got_half = precision_recall(torch.from_numpy(ref * 300), torch.from_numpy(smp * 300), half=True)
    assert got_half == pytest.approx(want, abs=1e-7)


@pytest.mark.parametrize("load,expect", [(0.2, 4), (1.0, 4), (2.0, 3), (3.4, 2), (3.6, 1), (9.0, 1)])
def test_eigensolver_threads_follow_idle_cores(monkeypatch, load, expect):
    from metrics import blas_threads
    monkeypatch.setattr(blas_threads.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(blas_threads.os, "getloadavg", lambda: (load, load, load))
    assert blas_threads.idle_cores() == expect
    seen = []
    monkeypatch.setattr(blas_threads, "_thread_setters", lambda: (lambda n: seen.append(n) or 4,))
    with blas_threads.eigensolver_blas():
        pass
    assert seen == [expect, 4]  # set for the block, then restored
