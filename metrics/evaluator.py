"""Streaming distributed evaluator: FID, Inception Score, sFID and improved precision/recall.

    ev = Evaluator(build_fid_inception(), mode="pytorch-fid", ref="fid_stats_imagenet256_guided_diffusion.npz")
    for images in my_rank_batches:      # uint8 [B, 3|1, H, W] (float [0, 1] also accepted in 'pytorch-fid' mode)
        ev.update(images, index=ids)     # on every rank; `index` (global sample ids) is optional
    results = ev.compute()               # collective; every rank gets {n, fid, is, is_std, is_splits, sfid,
                                         #                              precision, recall}

Metrics that the reference or weights cannot provide are left out (with one warning naming the reason) unless asked
for explicitly in `want`, which then raises. The reference side follows ADM's evaluator: stored `mu`/`sigma`
(`mu_s`/`sigma_s`) are used when present, otherwise they are computed from the reference images `arr_0` with the same
network and preprocessing; precision/recall always use `arr_0` features.
"""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch

from core import dist
from metrics.features import FeatureCollector
from metrics.files import Reference, load_reference
from metrics.formulas import (check_is_settings, feature_stats, frechet_distance_to_features, inception_score_splits,
                              precision_recall)
from metrics.inception import FIDInception
from metrics.preprocess import INCEPTION_SIZE

METRICS = ("fid", "is", "sfid", "pr")
_FEATURE_OF = {"fid": "pool3", "pr": "pool3", "is": "logits", "sfid": "spatial"}


class Evaluator:
    """See the module docstring. Settings of the Inception pass are those of metrics.features.FeatureCollector.

    Inception Score settings (metrics.formulas.inception_score_splits): `is_splits` contiguous splits, the std over
    them with `is_std_ddof` (0: torch-fidelity/np.std, 1: torchmetrics), `is_shuffle` None (ADM: sample order), True
    (torch-fidelity's seeded shuffle, seed 2020) or an int seed.
    """

    def __init__(self, inception: FIDInception, mode: str = "pytorch-fid", ref=None, want=None, device=None,
                 dtype: str = "fp32", channels_last: bool = False, batch_size: int = 50, size: int = INCEPTION_SIZE,
                 is_splits: int = 10, pr_k: int = 3, pr_batch: int = 10000, pr_half: bool | None = None,
                 is_std_ddof: int = 0, is_shuffle=None):
        self.ref = load_reference(ref) if isinstance(ref, (str, Path)) else ref
        if self.ref is not None and not isinstance(self.ref, Reference):
            raise TypeError(f"ref must be a path, a metrics.files.Reference or None, got {type(ref).__name__}")
        self.unavailable = self._unavailable(inception)
        if want is None:
            want = tuple(m for m in METRICS if m not in self.unavailable)
            if self.unavailable and dist.is_main():
                warnings.warn("metrics not computed: " + "; ".join(f"{m}: {r}" for m, r in self.unavailable.items()),
                              stacklevel=2)
        else:
            want = tuple(want)
            bad = [m for m in want if m not in METRICS]
            if bad:
                raise ValueError(f"unknown metrics {bad}; choose from {METRICS}")
            for m in want:
                if m in self.unavailable:
                    raise ValueError(f"metric {m!r} is unavailable: {self.unavailable[m]}")
        if not want:
            reasons = "; ".join(f"{m}: {r}" for m, r in self.unavailable.items())
            raise ValueError(f"no metric can be computed: {reasons}")
        self.want = want
        feats = tuple(dict.fromkeys(_FEATURE_OF[m] for m in want))
        self.collector = FeatureCollector(inception, mode, feats, device, dtype, channels_last, batch_size, size)
        self.device = self.collector.device
        self.is_splits, self.pr_k, self.pr_batch, self.pr_half = is_splits, pr_k, pr_batch, pr_half
        self.is_std_ddof, self.is_shuffle = is_std_ddof, is_shuffle
        if "is" in want:  # bad IS settings should fail now, not after the whole sampling run
            check_is_settings(is_splits, is_std_ddof, is_shuffle)
        self._check_reference_dims()

    # ---- reference side ---------------------------------------------------------------------------------------
    def _unavailable(self, inception: FIDInception) -> dict[str, str]:
        ref, out = self.ref, {}
        if not inception.has_fc:
            out["is"] = (f"the Inception weights ({inception.weights_source}) have no fc layer; the Inception Score "
                         "needs pt_inception-2015-12-05-6726825d.pth")
        if ref is None:
            for m in ("fid", "sfid", "pr"):
                out[m] = "no reference given (ref=None)"
            return out
        name = ref.source or "the reference"
        if ref.mu is None and not ref.has_images:
            out["fid"] = f"{name} has neither `mu`/`sigma` nor `arr_0` images"
        if ref.mu_s is None and not ref.has_images:
            out["sfid"] = (f"{name} has no `mu_s`/`sigma_s` and no `arr_0` images (ENAT/U-ViT stats files hold "
                           "mu/sigma only; use an ADM reference batch)")
        if not ref.has_images:
            out["pr"] = f"{name} has no `arr_0` reference images (precision/recall need an ADM reference batch)"
        return out

    def _check_reference_dims(self) -> None:
        ref, dims = self.ref, self.collector.dims
        if ref is None:
            return
        name = ref.source or "reference"
        checks = [("mu", ref.mu, "pool3", "fid"), ("mu_s", ref.mu_s, "spatial", "sfid")]
        for key, arr, feat, metric in checks:
            if metric in self.want and arr is not None and arr.shape[0] != dims[feat]:
                raise ValueError(f"{name}: `{key}` has {arr.shape[0]} dims but this evaluator's {feat} features have "
                                 f"{dims[feat]} (Inception input size {self.collector.size}; sFID reference "
                                 "statistics are 2023-d at 299 px)")

    def _reference_features(self) -> None:
        """Compute (collectively, sharded over ranks) the arr_0 features the wanted metrics still lack."""
        ref = self.ref
        need = []
        if "pr" in self.want or ("fid" in self.want and ref.mu is None):
            need.append("pool3")
        if "sfid" in self.want and ref.mu_s is None:
            need.append("spatial")
        c = self.collector
        key = (c.mode, c.size, c.dtype)
        if ref.features_key != key:  # features of another preprocessing/dtype are not comparable
            ref.features, ref.features_key = {}, key
        need = [f for f in need if f not in ref.features]
        if not need:
            return
        coll = FeatureCollector(c.model, c.mode, need, c.device, c.dtype, c.channels_last, c.batch_size, c.size)
        r, w, n = dist.rank(), dist.world_size(), ref.n_images
        for batch in ref.iter_images(r * n // w, (r + 1) * n // w, batch=c.batch_size):
            coll.update(torch.from_numpy(np.array(batch)).permute(0, 3, 1, 2))  # copy: stream slices are read-only
        ref.features.update(coll.gather())

    # ---- streaming side ---------------------------------------------------------------------------------------
    def update(self, images: torch.Tensor, index=None) -> None:
        """Add this rank's images: uint8 [B, 3|1, H, W] (or float [0, 1] in 'pytorch-fid' mode)."""
        self.collector.update(images, index)

    def __len__(self) -> int:
        return len(self.collector)

    def reset(self) -> None:
        self.collector.reset()

    def state_dict(self) -> dict:
        return self.collector.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.collector.load_state_dict(state)

    def save(self, path) -> None:
        """Collective: write all ranks' accumulated features to one file (rank 0, atomic)."""
        self.collector.save(path)

    def load(self, path) -> int:
        """Resume from save(): every rank takes its share; returns the number of samples already evaluated."""
        return self.collector.load(path)

    def compute(self) -> dict:
        """Collective: {'n', and of fid, is, is_std, is_splits, sfid, precision, recall what was wanted}, on every
        rank.

        IS: mean, std (ddof `is_std_ddof`, default 0) and the per-split values over `is_splits` contiguous splits in
        sample order (rank-major, or by `index`), after the optional seeded shuffle (`is_shuffle`).
        """
        feats = self.collector.gather()
        if self.ref is not None:
            self._reference_features()
        payload, exc = None, None
        if dist.is_main():
            try:
                payload = (self._metrics(feats), None)
            except Exception as e:  # noqa: BLE001 - forwarded so the other ranks raise too instead of hanging
                exc, payload = e, (None, f"{type(e).__name__}: {e}")
        result, error = dist.broadcast_object(payload)
        if exc is not None:
            raise exc
        if error is not None:
            raise RuntimeError(f"metric computation failed on rank 0: {error}")
        return result

    def _metrics(self, feats: dict) -> dict:
        n = next(iter(feats.values())).shape[0]
        out = {"n": n}
        ref = self.ref
        if "fid" in self.want:
            mu, sigma = (ref.mu, ref.sigma) if ref.mu is not None else feature_stats(ref.features["pool3"])
            out["fid"] = frechet_distance_to_features(feats["pool3"], mu, sigma)
        if "is" in self.want:
            out.update(inception_score_splits(feats["logits"], self.is_splits, self.is_std_ddof, self.is_shuffle))
        if "sfid" in self.want:
            mu_s, sigma_s = ((ref.mu_s, ref.sigma_s) if ref.mu_s is not None
                             else feature_stats(ref.features["spatial"]))
            out["sfid"] = frechet_distance_to_features(feats["spatial"], mu_s, sigma_s)
        if "pr" in self.want:
            out["precision"], out["recall"] = precision_recall(
                ref.features["pool3"].to(self.device), feats["pool3"].to(self.device), self.pr_k,
                self.pr_batch, self.pr_batch, self.pr_half)
        return out

    def stats(self) -> dict:
        """Collective: mu/sigma (and mu_s/sigma_s) of the accumulated sample features, for metrics.files.save_stats."""
        return features_to_stats(self.collector.gather())


def features_to_stats(feats: dict) -> dict:
    out = {"n": next(iter(feats.values())).shape[0]}
    if "pool3" in feats:
        out["mu"], out["sigma"] = feature_stats(feats["pool3"])
    if "spatial" in feats:
        out["mu_s"], out["sigma_s"] = feature_stats(feats["spatial"])
    return out
