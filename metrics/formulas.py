"""Metric formulas on features: statistics, Frechet distance, Inception Score, improved precision/recall.

Statistics and distances are float64 numpy. Precision/recall runs in torch on the features' device because it is a
sequence of large matrix products.
"""
from __future__ import annotations

import numpy as np
import torch

from metrics.blas_threads import eigensolver_blas


def feature_stats(feats, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance (ddof=1, like np.cov(feats, rowvar=False)) in float64.

    The centred product is accumulated in row chunks so a float32 [N, D] array never gets a full float64 copy.
    """
    feats = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
    if feats.ndim != 2:
        raise ValueError(f"features must be [N, D], got shape {feats.shape}")
    n, d = feats.shape
    if n < 2:
        raise ValueError(f"need at least 2 feature rows for a covariance (ddof=1), got {n}")
    mu = feats.mean(axis=0, dtype=np.float64)
    sigma = np.zeros((d, d), dtype=np.float64)
    for s in range(0, n, chunk):
        xc = feats[s:s + chunk].astype(np.float64) - mu
        sigma += xc.T @ xc
    return mu, sigma / (n - 1)


def _check_stats(mu, sigma, name: str, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    mu = np.atleast_1d(np.asarray(mu, dtype=np.float64))
    sigma = np.atleast_2d(np.asarray(sigma, dtype=np.float64))
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{name}: mu must be [D] and sigma [D, D]; got {mu.shape} and {sigma.shape}")
    if dim is not None and mu.shape[0] != dim:
        raise ValueError(f"{name}: feature dimension {mu.shape[0]} does not match the other side's {dim}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{name}: mu/sigma contain NaN or inf")
    return mu, sigma


def _psd_eigs(ev: np.ndarray) -> np.ndarray:
    """Eigenvalues of a PSD matrix with round-off noise set to 0: values below max * size * eps cannot be told from
    rounding errors, and their square roots (~1e-8 relative each) would otherwise add up on rank-deficient inputs."""
    top = ev.max(initial=0.0)
    return np.where(ev > top * ev.shape[0] * np.finfo(np.float64).eps, ev, 0.0)


def _cholesky(a: np.ndarray) -> np.ndarray | None:
    """Lower Cholesky factor of a clearly positive-definite matrix; None when it is singular up to round-off
    (a tiny pivot would make L L^T differ from `a` by noise that then shows up in the eigenvalues)."""
    try:
        low = np.linalg.cholesky(a)
    except np.linalg.LinAlgError:
        return None
    piv = np.diag(low) ** 2
    return low if piv.min() > piv.max() * a.shape[0] * np.finfo(np.float64).eps else None


def _trace_sqrt_product(s1: np.ndarray, s2: np.ndarray) -> float:
    """tr((S1 S2)^(1/2)) for symmetric PSD S1, S2.

    S1 S2 is similar to a symmetric PSD matrix, so the trace of its square root is the sum of the square roots of
    that matrix's eigenvalues. The matrix is L^T S_b L when one side factors as S_a = L L^T (Cholesky, cheap), else
    S1^(1/2) S2 S1^(1/2) from an eigendecomposition of S1 (both covariances singular, e.g. N <= D on both sides).
    """
    for a, b in ((s2, s1), (s1, s2)):  # the reference side is usually the full-rank one
        low = _cholesky(a)
        if low is not None:
            m = low.T @ b @ low
            break
    else:
        with eigensolver_blas():
            lam, vec = np.linalg.eigh(s1)
        root = (vec * np.sqrt(_psd_eigs(lam))) @ vec.T
        m = root @ s2 @ root
    with eigensolver_blas():  # only the eigensolvers: Cholesky and products scale with threads
        ev = np.linalg.eigvalsh(0.5 * (m + m.T))
    return float(np.sqrt(_psd_eigs(ev)).sum())


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), float64.

    No general matrix square root: one symmetric eigenvalue problem (see _trace_sqrt_product), 9-11x faster than
    scipy's sqrtm at 2048-d on a 2-core CPU (scripts/bench_fid.py) with the same value to ~1e-14 relative.
    Eigenvalues at round-off level are set to 0 (_psd_eigs), which keeps singular (N < D) covariances exact as well.
    The eigensolver runs on the idle cores only (metrics/blas_threads.py: on a busy CPU, extra BLAS threads make it
    several times slower); the products use all threads.
    """
    mu1, sigma1 = _check_stats(mu1, sigma1, "first statistics")
    mu2, sigma2 = _check_stats(mu2, sigma2, "second statistics", dim=mu1.shape[0])
    s1 = 0.5 * (sigma1 + sigma1.T)
    s2 = 0.5 * (sigma2 + sigma2.T)
    tr_covmean = _trace_sqrt_product(s1, s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)


def frechet_distance_to_features(feats, mu2, sigma2) -> float:
    """Frechet distance between the Gaussian fit of `feats` [N, D] (ddof 1) and (mu2, sigma2).

    When N <= D the sample covariance is S1 = B^T B with B the centred features / sqrt(N-1), and the non-zero
    eigenvalues of S1^(1/2) S2 S1^(1/2) are those of the N x N matrix B S2 B^T, so no D x D decomposition is needed
    (a 1k-sample FID costs milliseconds instead of seconds). Otherwise this is frechet_distance(*feature_stats(...)).
    """
    x = feats.detach().cpu().numpy() if isinstance(feats, torch.Tensor) else np.asarray(feats)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"features must be [N >= 2, D], got shape {x.shape}")
    n, d = x.shape
    if n > d:
        return frechet_distance(*feature_stats(x), mu2, sigma2)
    mu2, sigma2 = _check_stats(mu2, sigma2, "reference statistics", dim=d)
    x = x.astype(np.float64)
    mu1 = x.mean(axis=0)
    b = (x - mu1) / np.sqrt(n - 1)
    s2 = 0.5 * (sigma2 + sigma2.T)
    m = b @ s2 @ b.T
    with eigensolver_blas():
        ev = _psd_eigs(np.linalg.eigvalsh(0.5 * (m + m.T)))
    diff = mu1 - mu2
    return float(diff @ diff + (b * b).sum() + np.trace(s2) - 2.0 * np.sqrt(ev).sum())


# torch-fidelity's default shuffle seed (its `rng_seed`); with samples_shuffle=True it reorders the samples once before
# splitting. Recipe as of torch-fidelity 0.4.0 (metric_isc.isc_features_to_metric): rows = rows[perm] with
# perm = numpy.random.RandomState(seed).permutation(N) (legacy MT19937 generator), then the usual contiguous chunks
# i*N//splits .. (i+1)*N//splits of the permuted rows, float64 softmax, std by np.std (ddof 0).
TORCH_FIDELITY_SHUFFLE_SEED = 2020


def check_is_settings(splits: int, ddof: int, shuffle) -> int | None:
    """Validate Inception Score settings; returns the shuffle seed (None: no shuffle, True: 2020, int: itself)."""
    if not isinstance(splits, (int, np.integer)) or splits < 1:
        raise ValueError(f"IS splits must be a positive int, got {splits!r}")
    if ddof not in (0, 1) or (ddof == 1 and splits < 2):
        raise ValueError(f"IS std ddof must be 0 or 1 (1 needs at least 2 splits), got ddof={ddof!r}, "
                         f"splits={splits}")
    if shuffle is None or shuffle is False:
        return None
    if shuffle is True:
        return TORCH_FIDELITY_SHUFFLE_SEED
    if isinstance(shuffle, (int, np.integer)) and shuffle >= 0:
        return int(shuffle)
    raise ValueError(f"IS shuffle must be None, a bool or a non-negative int seed, got {shuffle!r}")


def inception_score_splits(logits, splits: int = 10, ddof: int = 0, shuffle=None) -> dict:
    """IS from unbiased logits [N, C]: exp(E_x KL(p(y|x) || p(y))) per split, softmax in float64.

    Returns {'is': mean over splits, 'is_std': std over splits with `ddof`, 'is_splits': [per-split IS]}.
    splits: contiguous chunks with bounds i*N//splits (for N = 50k, ADM's 10 x 5000 chunks).
    ddof: 0 as np.std (torch-fidelity), 1 as torch.std (torchmetrics).
    shuffle: None (ADM: no shuffle, sample order), True (torch-fidelity's default: seed 2020) or an int seed; the rows
        are permuted with numpy.random.RandomState(seed).permutation(N) before splitting (torch-fidelity's recipe).
        torchmetrics shuffles with an unseeded torch.randperm, which cannot be reproduced.
    """
    seed = check_is_settings(splits, ddof, shuffle)
    logits = logits.detach().cpu().numpy() if isinstance(logits, torch.Tensor) else np.asarray(logits)
    logits = logits.astype(np.float64)
    n = logits.shape[0]
    if logits.ndim != 2 or n < splits:
        raise ValueError(f"inception_score needs logits [N, C] with N >= splits={splits}, got {logits.shape}")
    if seed is not None:
        logits = logits[np.random.RandomState(seed).permutation(n)]
    logp = logits - logits.max(axis=1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
    scores = []
    for k in range(splits):
        part = logp[k * n // splits:(k + 1) * n // splits]
        p = np.exp(part)
        log_marginal = np.log(p.mean(axis=0))
        kl = (p * (part - log_marginal)).sum(axis=1).mean()
        scores.append(float(np.exp(kl)))
    return {"is": float(np.mean(scores)), "is_std": float(np.std(scores, ddof=ddof)), "is_splits": scores}


def inception_score(logits, splits: int = 10, ddof: int = 0, shuffle=None) -> tuple[float, float]:
    """(mean, std) of inception_score_splits(logits, splits, ddof, shuffle); defaults: no shuffle, ddof 0."""
    r = inception_score_splits(logits, splits, ddof, shuffle)
    return r["is"], r["is_std"]


def _sq_dists(a: torch.Tensor, b: torch.Tensor, half: bool) -> torch.Tensor:
    """Squared Euclidean distances |a|^2 - 2 a.b + |b|^2 clamped at 0, as float32.

    With half=True (meant for CUDA) the block is computed in float16 and recomputed in float32 only when it
    overflowed, as ADM's evaluator does; on CPU float32 is used directly (no fast fp16 matmul there).
    """
    if half:
        ah, bh = a.half(), b.half()
        d = (ah * ah).sum(1, keepdim=True) - 2.0 * (ah @ bh.t()) + (bh * bh).sum(1)[None]
        if torch.isfinite(d).all():
            return d.float().clamp_min_(0.0)
    a, b = a.float(), b.float()
    d = (a * a).sum(1, keepdim=True) - 2.0 * (a @ b.t()) + (b * b).sum(1)[None]
    return d.clamp_min_(0.0)


def manifold_radii(feats: torch.Tensor, k: int = 3, row_batch: int = 10000, col_batch: int = 10000,
                   half: bool | None = None) -> torch.Tensor:
    """Squared distance of every point to its k-th nearest neighbour in its own set, the point itself counting as
    the 0-th (ADM: the (k+1)-th smallest value of the row, self-distance 0 included)."""
    n = feats.shape[0]
    if n < k + 1:
        raise ValueError(f"precision/recall with k={k} needs at least {k + 1} points per set, got {n}")
    half = feats.device.type == "cuda" if half is None else half
    radii = torch.empty(n, dtype=torch.float32, device=feats.device)
    for r in range(0, n, row_batch):
        rows = feats[r:r + row_batch]
        block = torch.cat([_sq_dists(rows, feats[c:c + col_batch], half) for c in range(0, n, col_batch)], 1)
        radii[r:r + row_batch] = block.kthvalue(k + 1, dim=1).values
    return radii


def precision_recall(ref: torch.Tensor, samples: torch.Tensor, k: int = 3, row_batch: int = 10000,
                     col_batch: int = 10000, half: bool | None = None) -> tuple[float, float]:
    """Improved precision/recall (Kynkaanniemi et al.) with ADM's evaluator semantics.

    precision = fraction of samples within (<=) the k-NN radius of at least one reference point;
    recall    = fraction of reference points within the k-NN radius of at least one sample.
    """
    ref = torch.as_tensor(ref).float()
    samples = torch.as_tensor(samples).float().to(ref.device)
    if ref.dim() != 2 or samples.dim() != 2 or ref.shape[1] != samples.shape[1]:
        raise ValueError(f"precision_recall needs [N, D] features of equal D, got {tuple(ref.shape)} and "
                         f"{tuple(samples.shape)}")
    half = ref.device.type == "cuda" if half is None else half
    r_ref = manifold_radii(ref, k, row_batch, col_batch, half)
    r_smp = manifold_radii(samples, k, row_batch, col_batch, half)
    smp_in_ref = torch.zeros(samples.shape[0], dtype=torch.bool, device=ref.device)
    ref_in_smp = torch.zeros(ref.shape[0], dtype=torch.bool, device=ref.device)
    for r in range(0, ref.shape[0], row_batch):
        for c in range(0, samples.shape[0], col_batch):
            d = _sq_dists(ref[r:r + row_batch], samples[c:c + col_batch], half)
            smp_in_ref[c:c + col_batch] |= (d <= r_ref[r:r + row_batch, None]).any(0)
            ref_in_smp[r:r + row_batch] |= (d <= r_smp[None, c:c + col_batch]).any(1)
    return float(smp_in_ref.float().mean()), float(ref_in_smp.float().mean())
