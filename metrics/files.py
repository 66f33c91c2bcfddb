"""Reference statistics and sample-batch files (npz), read and written in the formats the papers use.

Read:  ENAT/U-ViT stats (`mu`, `sigma`), ADM reference batches (`arr_0` uint8 NHWC images, `mu`, `sigma`, `mu_s`,
       `sigma_s`), pytorch-fid `--save-stats` files, or a plain sample batch (`arr_0` only: statistics are then
       computed from its images when needed, as ADM's evaluator does).
Write: stats npz (`mu`, `sigma`, plus `mu_s`/`sigma_s` when computed) and ADM-style sample batches (`arr_0` uint8
       NHWC, optional `arr_1` labels), atomically (temporary file + os.replace).
`arr_0` is streamed from the zip member in slices, so a 10k x 256 x 256 x 3 reference batch never sits in memory whole.
"""
from __future__ import annotations

import os
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch


class StatsFileError(KeyError, ValueError):
    """A reference/stats file that is not what it should be. A KeyError for a missing array (as before) and a
    ValueError, so entry points that report bad input as one `error:` line catch it; str() is the plain message."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


EXPECTED_STATS = ("an .npz with `mu` [D] and `sigma` [D, D] (FID statistics, e.g. "
                  "fid_stats_imagenet256_guided_diffusion.npz) or an ADM reference batch (`arr_0` uint8 [N, H, W, 3])")


@dataclass
class Reference:
    """Reference side of FID/sFID/P&R. Any field may be None; `features` caches Inception features of `arr_0`."""
    mu: np.ndarray | None = None
    sigma: np.ndarray | None = None
    mu_s: np.ndarray | None = None
    sigma_s: np.ndarray | None = None
    source: str | None = None  # file the reference was read from, for messages
    path: str | None = None  # npz holding `arr_0`, streamed on demand
    images: np.ndarray | None = None  # in-memory uint8 [N, H, W, 3] alternative to `path`
    n_images: int = 0
    features: dict = field(default_factory=dict)  # arr_0 features, valid for the settings in `features_key`
    features_key: tuple | None = None

    def __post_init__(self):
        if self.images is not None:
            self.images = np.asarray(self.images)
            if self.images.dtype != np.uint8 or self.images.ndim != 4 or self.images.shape[-1] not in (1, 3):
                raise ValueError(f"reference images must be uint8 [N, H, W, 3], got {self.images.dtype} "
                                 f"{self.images.shape}")
            self.n_images = len(self.images)

    @property
    def has_images(self) -> bool:
        return self.n_images > 0

    def iter_images(self, start: int = 0, stop: int | None = None, batch: int = 64):
        """uint8 NHWC numpy slices of rows [start, stop) of arr_0."""
        stop = self.n_images if stop is None else stop
        if self.images is not None:
            for s in range(start, stop, batch):
                yield self.images[s:min(s + batch, stop)]
        elif self.path is not None:
            yield from iter_npz_rows(self.path, "arr_0", start, stop, batch)


def _check_pair(path, mu, sigma, mu_key: str, sigma_key: str):
    try:
        mu = np.asarray(mu, dtype=np.float64)
        sigma = np.asarray(sigma, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{path}: `{mu_key}` and `{sigma_key}` must be numeric arrays, got "
                         f"{np.asarray(mu).dtype} and {np.asarray(sigma).dtype}") from None
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise ValueError(f"{path}: `{mu_key}` must be [D] and `{sigma_key}` [D, D]; got {mu.shape} and {sigma.shape}")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise ValueError(f"{path}: `{mu_key}`/`{sigma_key}` contain NaN or inf")
    return mu, sigma


def _npy_member(z: zipfile.ZipFile, key: str, path) -> str:
    name = key + ".npy"
    if name not in z.namelist():
        raise StatsFileError(f"{path}: no array `{key}` (members: {', '.join(sorted(z.namelist()))})")
    return name


def _read_header(f, path, key):
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    if version == (2, 0):
        return np.lib.format.read_array_header_2_0(f)
    raise ValueError(f"{path}: `{key}` uses .npy format version {version}, which cannot be streamed")


def npz_array_shape(path, key: str) -> tuple[tuple, np.dtype]:
    """Shape and dtype of one npz member, read from its .npy header only."""
    with zipfile.ZipFile(path) as z, z.open(_npy_member(z, key, path)) as f:
        shape, _, dtype = _read_header(f, path, key)
    return shape, dtype


def iter_npz_rows(path, key: str, start: int = 0, stop: int | None = None, batch: int = 64):
    """Yield consecutive row slices [start, stop) of a C-order npz member without loading the whole array."""
    with zipfile.ZipFile(path) as z, z.open(_npy_member(z, key, path)) as f:
        shape, fortran, dtype = _read_header(f, path, key)
        if fortran or dtype.hasobject:
            raise ValueError(f"{path}: `{key}` must be a C-order numeric array to be streamed")
        stop = shape[0] if stop is None else min(stop, shape[0])
        row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        f.seek(f.tell() + start * row_bytes)
        for s in range(start, stop, batch):
            n = min(batch, stop - s)
            buf = f.read(n * row_bytes)
            if len(buf) != n * row_bytes:
                raise ValueError(f"{path}: `{key}` is truncated (wanted rows up to {s + n} of {shape[0]})")
            yield np.frombuffer(buf, dtype=dtype).reshape((n,) + tuple(shape[1:]))


def _read_stats(path: str, ref: Reference) -> set:
    """Fill ref.mu/sigma (and mu_s/sigma_s) from the npz at path -> its member names."""
    f = np.load(path, allow_pickle=False)
    if not isinstance(f, np.lib.npyio.NpzFile):  # a bare .npy array
        raise ValueError(f"{path}: a single .npy array {getattr(f, 'shape', '')}, not an .npz archive; "
                         f"expected {EXPECTED_STATS}")
    with f:
        keys = set(f.files)
        if "mu" in keys or "sigma" in keys:
            if not {"mu", "sigma"} <= keys:
                raise StatsFileError(f"{path}: has only one of `mu`/`sigma` (keys: {sorted(keys)})")
            ref.mu, ref.sigma = _check_pair(path, f["mu"], f["sigma"], "mu", "sigma")
        if "mu_s" in keys and "sigma_s" in keys:
            ref.mu_s, ref.sigma_s = _check_pair(path, f["mu_s"], f["sigma_s"], "mu_s", "sigma_s")
    return keys


def load_reference(path) -> Reference:
    """Read a stats or reference-batch npz. Needs `mu`+`sigma`, or `arr_0` images to compute them from."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"reference statistics file not found: {path}")
    ref = Reference(source=path)
    try:
        keys = _read_stats(path, ref)
        if "arr_0" in keys:
            shape, dtype = npz_array_shape(path, "arr_0")
            if dtype != np.uint8 or len(shape) != 4 or shape[-1] not in (1, 3):
                raise ValueError(f"{path}: `arr_0` must be uint8 [N, H, W, 3] images, got {dtype} {shape}")
            ref.path, ref.n_images = path, int(shape[0])
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as e:
        if isinstance(e, ValueError) and str(e).startswith(path):
            raise  # our own message, already naming the file
        if isinstance(e, (zipfile.BadZipFile, EOFError)) or "pickled" in str(e):
            why = "not a complete .npz archive: truncated, or another kind of file"  # numpy's hint is allow_pickle
        else:
            why = f"{type(e).__name__}: {' '.join(str(e).split())[:200]}"
        raise ValueError(f"{path}: cannot be read as a stats file ({why}); expected {EXPECTED_STATS}") from None
    if ref.mu is None and not ref.has_images:
        raise StatsFileError(f"{path}: not a reference file: needs `mu` and `sigma` (FID statistics) or `arr_0` "
                             f"(uint8 NHWC images); found keys {sorted(keys)}")
    return ref


def _atomic_npz(path, compressed: bool, arrays: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:  # a file object, so numpy does not append '.npz' to the name
            (np.savez_compressed if compressed else np.savez)(f, **arrays)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def save_stats(path, mu, sigma, mu_s=None, sigma_s=None) -> Path:
    """Write `mu`, `sigma` (and `mu_s`, `sigma_s`) as float64, the layout of ADM/U-ViT/pytorch-fid stats files."""
    arrays = dict(zip(("mu", "sigma"), _check_pair(path, mu, sigma, "mu", "sigma")))
    if mu_s is not None:
        arrays.update(zip(("mu_s", "sigma_s"), _check_pair(path, mu_s, sigma_s, "mu_s", "sigma_s")))
    return _atomic_npz(path, False, arrays)


def _as_nhwc_uint8(images, path) -> np.ndarray:
    arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
    if arr.dtype != np.uint8 or arr.ndim != 4:
        raise ValueError(f"{path}: sample batch images must be uint8 [N, H, W, 3] or [N, 3, H, W], got "
                         f"{arr.dtype} {arr.shape}")
    if arr.shape[-1] not in (1, 3) and arr.shape[1] in (1, 3):
        arr = arr.transpose(0, 2, 3, 1)
    if arr.shape[-1] == 1:
        arr = np.repeat(arr, 3, axis=-1)
    if arr.shape[-1] != 3:
        raise ValueError(f"{path}: cannot tell the channel axis of images with shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _as_labels(labels, n: int, path) -> np.ndarray:
    lab = labels.detach().cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if lab.shape != (n,):
        raise ValueError(f"{path}: labels must be [N={n}], got shape {lab.shape}")
    return lab.astype(np.int64)


def write_sample_batch(path, images, labels=None) -> Path:
    """ADM sample batch: `arr_0` uint8 [N, H, W, 3] and optional `arr_1` int64 labels [N].

    `images` may be uint8 NHWC or NCHW (numpy or torch); grayscale is repeated to RGB, as the evaluator does.
    """
    arr = _as_nhwc_uint8(images, path)
    arrays = {"arr_0": arr}
    if labels is not None:
        arrays["arr_1"] = _as_labels(labels, arr.shape[0], path)
    return _atomic_npz(path, False, arrays)


class SampleBatchWriter:
    """Streams an ADM sample batch to disk batch by batch (50k x 256^2 x 3 is ~10 GB: too much to hold at once).

    Rows go to a raw temporary file; close() writes the npz (`arr_0`, and `arr_1` if labels were given for every
    batch) and renames it into place. One writer per process: under torchrun give each rank its own path, or
    gather the images to one rank first.
    """

    def __init__(self, path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self._raw_name = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".", suffix=".raw")
        self._raw = os.fdopen(fd, "wb")
        self._shape, self._n, self._labels = None, 0, []

    def add(self, images, labels=None) -> None:
        arr = _as_nhwc_uint8(images, self.path)
        if self._shape is not None and arr.shape[1:] != self._shape:
            raise ValueError(f"{self.path}: image size changed from {self._shape} to {arr.shape[1:]}")
        if self._n and (labels is not None) != bool(self._labels):
            raise ValueError(f"{self.path}: give labels for every batch or for none")
        self._shape = arr.shape[1:]
        self._raw.write(arr.tobytes())
        if labels is not None:
            self._labels.append(_as_labels(labels, arr.shape[0], self.path))
        self._n += arr.shape[0]

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:  # leave no half-written file behind
            self._raw.close()
            os.unlink(self._raw_name)

    def close(self) -> Path:
        if self._shape is None:
            raise ValueError(f"{self.path}: no images were added")
        self._raw.close()
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=self.path.name + ".", suffix=".tmp")
        os.close(fd)
        try:
            header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                      "shape": (self._n,) + tuple(self._shape)}
            with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as z:
                with z.open("arr_0.npy", "w", force_zip64=True) as f, open(self._raw_name, "rb") as raw:
                    np.lib.format.write_array_header_1_0(f, header)
                    while chunk := raw.read(1 << 24):
                        f.write(chunk)
                if self._labels:
                    with z.open("arr_1.npy", "w") as f:
                        np.lib.format.write_array(f, np.concatenate(self._labels))
            os.replace(tmp, self.path)
        finally:
            for p in (tmp, self._raw_name):
                if os.path.exists(p):
                    os.unlink(p)
        return self.path
