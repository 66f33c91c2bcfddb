"""Streaming, distributed collection of Inception features.

Every rank calls `update(images)` on its own images; features (never images) are kept per rank on the CPU and
concatenated across ranks rank-major by `gather()` (uneven counts allowed). When every update passes `index` (the
global sample ids), `gather()` sorts by it, so the result does not depend on the number of processes or on how an
interrupted run was resumed. `save`/`load` write and read the accumulated features in one file; `load` splits them
over the current ranks, so a run may resume with a different number of processes.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import torch

from core.precision import WORDS as PRECISION_WORDS
from core.precision import resolve_precision
from core import dist
from metrics.inception import FEATURES as ALL_FEATURES
from metrics.inception import LOGIT_FEATURES, FIDInception, feature_dims
from metrics.preprocess import INCEPTION_SIZE, check_images, preprocess

FEATURES = ("pool3", "logits", "spatial")  # the default set: FID + P&R, IS, sFID
AUTOCAST_DTYPES = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
STATE_FORMAT = "fid-inception-features-v1"


class FeatureCollector:
    """Runs the FID Inception on image batches and accumulates the requested features on this rank.

    dtype: 'fp32' (default, the papers' protocol), 'bf16' or 'fp16' (CUDA only) autocast, or 'auto': bf16 where the
        device computes it natively (CUDA with bf16, CPUs with AMX-BF16/AVX512-BF16), else fp32, and channels_last
        either way (core.precision.resolve_precision; the choice and its reason are logged and kept in
        `dtype_reason`, the resolved word in `dtype`). bf16 is 2-4x faster on such CPUs, but with the TF weights it
        moves pool3 by ~10-15% relative (rounding compounds through the 94 layers): use it for quick numbers only,
        against reference statistics computed with the same dtype, never for numbers compared with papers.
    channels_last: NHWC convolutions (faster on CPU, same values up to float round-off).
    size: Inception input side; only 299 gives comparable numbers (smaller sides exist for fast tests).
    """

    def __init__(self, inception: FIDInception, mode: str = "pytorch-fid", features=FEATURES, device=None,
                 dtype: str = "fp32", channels_last: bool = False, batch_size: int = 50, size: int = INCEPTION_SIZE):
        features = tuple(features)
        unknown = [f for f in features if f not in ALL_FEATURES]
        if unknown or not features:
            raise ValueError(f"features must be a non-empty subset of {ALL_FEATURES}, got {features}")
        if any(f in LOGIT_FEATURES for f in features) and not inception.has_fc:
            raise ValueError(f"logits (Inception Score) are unavailable: the weights ({inception.weights_source}) "
                             "have no fc layer")
        if dtype not in PRECISION_WORDS:
            raise ValueError(f"dtype must be one of {PRECISION_WORDS}, got {dtype!r}")
        check_images(torch.zeros(1, 3, 1, 1, dtype=torch.uint8), mode)  # validates `mode` early
        self.device = torch.device(device) if device is not None else next(inception.parameters()).device
        self.dtype_requested = dtype
        dtype, self.dtype_reason = resolve_precision(dtype, self.device, "inception")
        if self.dtype_requested == "auto":
            channels_last = True  # NHWC is oneDNN's preferred convolution layout (faster in fp32 and bf16, bench_fid)
        self.model = inception.eval().requires_grad_(False).to(self.device)
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.mode, self.features, self.dtype = mode, features, dtype
        self.channels_last, self.batch_size, self.size = channels_last, int(batch_size), int(size)
        self.dims = feature_dims(self.size)
        self.reset()

    def reset(self) -> None:
        self._chunks = {f: [] for f in self.features}
        self._index: list[torch.Tensor] = []
        self._indexed: bool | None = None

    def __len__(self) -> int:
        return sum(c.shape[0] for c in self._chunks[self.features[0]])

    def _autocast(self):
        dt = AUTOCAST_DTYPES[self.dtype]
        if dt is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dt)

    @torch.inference_mode()
    def extract(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Features of one batch (float32, CPU) without storing them. images: see metrics/preprocess.py."""
        images = check_images(images, self.mode)
        out = {f: [] for f in self.features}
        for s in range(0, images.shape[0], self.batch_size):
            x = preprocess(images[s:s + self.batch_size].to(self.device), self.mode, self.size)
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with self._autocast():
                y = self.model(x, features=self.features)
            for f in self.features:
                out[f].append(y[f].float().cpu())
        return {f: torch.cat(v) if v else torch.zeros(0, self.dims[f]) for f, v in out.items()}

    def update(self, images: torch.Tensor, index=None) -> None:
        """Add a batch. `index`: optional global sample ids [B]; give it for all updates or for none."""
        indexed = index is not None
        if self._indexed is not None and indexed != self._indexed:
            raise ValueError("update(): pass `index` for every batch or for none (mixing makes the order undefined)")
        if indexed:
            index = torch.as_tensor(index, dtype=torch.long).reshape(-1).cpu()
            if index.shape[0] != images.shape[0]:
                raise ValueError(f"update(): index has {index.shape[0]} entries for {images.shape[0]} images")
        feats = self.extract(images)
        for f in self.features:
            self._chunks[f].append(feats[f])
        if indexed:
            self._index.append(index)
        self._indexed = indexed

    def _local(self) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
        feats = {f: torch.cat(c) if c else torch.zeros(0, self.dims[f]) for f, c in self._chunks.items()}
        index = (torch.cat(self._index) if self._index else torch.zeros(0, dtype=torch.long)) if self._indexed else None
        return feats, index

    def gather(self) -> dict[str, torch.Tensor]:
        """All ranks' features (CPU float32), rank-major, or sorted by `index` when given. Collective call."""
        feats, index = self._local()
        # Every rank must agree on whether an index exists, otherwise the collectives below would not pair up.
        flags = dist.all_gather_cat(torch.tensor([[-1 if self._indexed is None else int(self._indexed)]],
                                                 device=self.device)).flatten().tolist()
        decided = {f for f in flags if f >= 0}
        if len(decided) > 1:
            raise ValueError("some ranks passed `index` to update() and others did not")
        out = {f: dist.all_gather_cat(v.to(self.device)).cpu() for f, v in feats.items()}
        if decided == {1}:
            index = index if index is not None else torch.zeros(0, dtype=torch.long)
            index = dist.all_gather_cat(index.to(self.device)).cpu()
            if torch.unique(index).numel() != index.numel():
                raise ValueError("duplicate sample indices across update() calls/ranks")
            order = torch.argsort(index)
            out = {f: v[order] for f, v in out.items()}
            out["index"] = index[order]
        return out

    def state_dict(self) -> dict:
        """This rank's accumulated features and the settings they depend on (local, not collective)."""
        feats, index = self._local()
        return {"format": STATE_FORMAT, "mode": self.mode, "size": self.size, "features": feats, "index": index}

    def load_state_dict(self, state: dict) -> None:
        """Replace this rank's features with those of `state` (as produced by state_dict())."""
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise ValueError(f"not a feature state (expected format {STATE_FORMAT!r})")
        for key, want in (("mode", self.mode), ("size", self.size)):
            if state[key] != want:
                raise ValueError(f"saved features were computed with {key}={state[key]!r}, "
                                 f"this evaluator uses {want!r}")
        missing = [f for f in self.features if f not in state["features"]]
        if missing:
            raise ValueError(f"saved features lack {missing} (they hold {sorted(state['features'])})")
        self.reset()
        n = None
        for f in self.features:
            t = state["features"][f].float().cpu()
            if t.dim() != 2 or t.shape[1] != self.dims[f] or (n is not None and t.shape[0] != n):
                raise ValueError(f"saved feature `{f}` has shape {tuple(t.shape)}, expected [N, {self.dims[f]}]")
            n = t.shape[0]
            self._chunks[f].append(t)
        if state["index"] is not None:
            self._index.append(state["index"].long().cpu())
            self._indexed = True
        elif n:
            self._indexed = False

    def save(self, path) -> None:
        """Gather every rank's features and write them to one file on rank 0, atomically. Collective call."""
        feats = self.gather()
        index = feats.pop("index", None)
        if dist.is_main():
            path = Path(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            state = {"format": STATE_FORMAT, "mode": self.mode, "size": self.size, "features": feats, "index": index}
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
            os.close(fd)
            try:
                torch.save(state, tmp)
                os.replace(tmp, path)
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        dist.barrier()

    def load(self, path) -> int:
        """Read a file written by save() on every rank and keep this rank's contiguous share; returns the total N."""
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise FileNotFoundError(f"feature state file not found: {path}") from None
        try:
            first = state["features"][self.features[0]]
        except (TypeError, KeyError):
            raise ValueError(f"{path}: not a feature state file (expected format {STATE_FORMAT!r})") from None
        n, r, w = first.shape[0], dist.rank(), dist.world_size()
        lo, hi = r * n // w, (r + 1) * n // w
        share = dict(state, features={f: v[lo:hi] for f, v in state["features"].items()},
                     index=None if state["index"] is None else state["index"][lo:hi])
        try:
            self.load_state_dict(share)
        except ValueError as e:
            raise ValueError(f"{path}: {e}") from None
        return n
