"""Resumable, process-count-independent output of feature extraction.

The image list is cut into fixed shards of consecutive global indices. Each shard's result is one file written
atomically in a shard directory; a run skips shards whose file exists, so a killed job restarts where it stopped.
A manifest pins what the shards were made from (image list, resolution, tokenizer weights) so a re-run with other
settings is refused instead of mixing outputs. When every shard is present, the final output is assembled from the
shards in index order, into a temporary file renamed into place.

Token rows (the official `.npy` container: int64 [rows, 1 + h*w], label first): for the train split the official
script writes, per batch of 128 images, the originals then their horizontal flips. We keep that layout on fixed
blocks of 128 consecutive images of the sorted image list (not on compute batches), so the file does not depend on
--batch_size or on the number of processes, and equals the official order when no image is skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import zipfile

import numpy as np

ROW_BLOCK = 128


def atomic_write_bytes(path: str, data: bytes) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def file_fingerprint(path: str, chunk: int = 1 << 22) -> str:
    """Size + sha1 of the first and last 4 MiB: cheap on multi-GB weights, enough to tell files apart."""
    size = os.path.getsize(path)
    h = hashlib.sha1(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(chunk))
        if size > chunk:
            f.seek(max(chunk, size - chunk))
            h.update(f.read(chunk))
    return f"{size}:{h.hexdigest()}"


def list_digest(files: list[str], labels: list[int]) -> str:
    h = hashlib.sha1()
    for f, y in zip(files, labels):
        h.update(f"{y}\t{f}\n".encode())
    return h.hexdigest()


def shard_ranges(n_images: int, shard_size: int) -> list[tuple[int, int]]:
    return [(s, min(s + shard_size, n_images)) for s in range(0, n_images, shard_size)]


class ShardStore:
    """Shard files `shard_{i:06d}{suffix}` plus `manifest.json` in one directory."""

    def __init__(self, directory: str, suffix: str):
        self.dir, self.suffix = directory, suffix

    def path(self, i: int) -> str:
        return os.path.join(self.dir, f"shard_{i:06d}{self.suffix}")

    def done(self, i: int) -> bool:
        return os.path.isfile(self.path(i))

    def any_done(self) -> bool:
        return os.path.isdir(self.dir) and any(n.startswith("shard_") and n.endswith(self.suffix)
                                               for n in os.listdir(self.dir))

    def open(self, manifest: dict, names: dict | None = None) -> None:
        """Create the directory and manifest, or check that an existing manifest matches `manifest`.

        A manifest without any finished shard (a run that stopped before its first shard) is simply replaced: there is
        nothing to mix up. `names` maps manifest keys to the settings a user changes (for the message).
        """
        os.makedirs(self.dir, exist_ok=True)
        mpath = os.path.join(self.dir, "manifest.json")
        if os.path.isfile(mpath) and self.any_done():
            try:
                with open(mpath) as f:
                    old = json.load(f)
            except (OSError, ValueError) as e:
                raise ValueError(f"{mpath}: unreadable ({e}); remove {self.dir} to start the extraction "
                                 f"again") from None
            diff = sorted(k for k in set(old) | set(manifest) if old.get(k) != manifest.get(k))
            if diff:
                what = ", ".join((names or {}).get(k, k) for k in diff)
                raise ValueError(f"{mpath}: unfinished shards were made with other settings (differing: {what}); "
                                 f"re-run with the earlier settings, remove {self.dir}, or choose another --output")
        else:
            atomic_write_bytes(mpath, json.dumps(manifest, indent=1, sort_keys=True).encode())

    def remove(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def order_token_rows(indices: list[int], labels: list[int], codes: np.ndarray, flip_codes: np.ndarray | None,
                     block: int = ROW_BLOCK) -> np.ndarray:
    """Rows for one shard, images sorted by global index: per block of `block` indices, originals then flips."""
    n = len(indices)
    rows = np.empty((n * (2 if flip_codes is not None else 1), 1 + codes.shape[1]), dtype=np.int64)
    if flip_codes is None:
        rows[:, 0], rows[:, 1:] = labels, codes
        return rows
    blocks = np.asarray(indices, dtype=np.int64) // block
    out, start = 0, 0
    while start < n:
        stop = start
        while stop < n and blocks[stop] == blocks[start]:
            stop += 1
        k = stop - start
        rows[out:out + k, 0] = labels[start:stop]
        rows[out:out + k, 1:] = codes[start:stop]
        rows[out + k:out + 2 * k, 0] = labels[start:stop]
        rows[out + k:out + 2 * k, 1:] = flip_codes[start:stop]
        out, start = out + 2 * k, stop
    return rows


def save_token_shard(store: ShardStore, i: int, rows: np.ndarray, skipped: list[str]) -> None:
    tmp = f"{store.path(i)}.tmp{os.getpid()}.npz"
    with open(tmp, "wb") as f:
        np.savez(f, rows=rows, skipped=np.asarray(skipped, dtype=np.str_))
    os.replace(tmp, store.path(i))


class ShardError(ValueError):
    """A finished shard that cannot be read: named, with what to do, on one line."""


def shard_error(path: str, why: str) -> ShardError:
    return ShardError(f"{path}: unreadable shard ({why}); delete it and re-run the same command to extract its "
                      f"images again")


def _open_shard(path: str):
    """The shard's NpzFile, or ShardError in our words (numpy's own text advises loading pickled data unsafely)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
        if head != b"PK\x03\x04":
            raise shard_error(path, "not an .npz archive" if head else "empty file")
        z = np.load(path, allow_pickle=False)
        missing = [k for k in ("rows", "skipped") if k not in z.files]
        if missing:
            z.close()
            raise shard_error(path, f"no '{missing[0]}' array: not a shard of this program")
        return z
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, ShardError):
            raise
        raise shard_error(path, "truncated or corrupted: not a complete .npz file") from None


def load_token_shard(store: ShardStore, i: int) -> tuple[np.ndarray, list[str]]:
    """(rows, skipped files) of a finished shard; a damaged file raises ShardError naming it."""
    path = store.path(i)
    with _open_shard(path) as z:
        try:
            return z["rows"], [str(s) for s in z["skipped"]]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            why = "it holds pickled objects, not the int64 rows of a shard" if "pickle" in str(e).lower() else \
                "truncated or corrupted: not a complete .npz file"
            raise shard_error(path, why) from None


def check_token_shard(store: ShardStore, i: int) -> None:
    """A finished shard's archive opens and names its two arrays (reads the zip directory only, not the rows)."""
    _open_shard(store.path(i)).close()


def assemble_token_file(store: ShardStore, n_shards: int, out_path: str, width: int) -> tuple[int, list[str]]:
    """Concatenate every shard into `out_path` (.npy, int64 [rows, width]) atomically -> (rows, skipped files)."""
    total, skipped = 0, []
    for i in range(n_shards):
        rows, names = load_token_shard(store, i)
        if rows.ndim != 2 or rows.shape[1] != width or rows.dtype != np.int64:
            raise shard_error(store.path(i), f"expected int64 rows of width {width}, got {rows.dtype} {rows.shape}")
        total += rows.shape[0]
        skipped += names
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    tmp = f"{out_path}.tmp{os.getpid()}.npy"
    out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.int64, shape=(total, width))
    at = 0
    for i in range(n_shards):
        rows, _ = load_token_shard(store, i)
        out[at:at + rows.shape[0]] = rows
        at += rows.shape[0]
    out.flush()
    del out
    os.replace(tmp, out_path)
    return total, skipped
