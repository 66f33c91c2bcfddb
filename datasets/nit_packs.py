"""Deterministic packs of NiT latents: which pack a rank trains on at a step, and the packed batch itself.

Order (`pack_for`): epoch e = step // steps_per_epoch uses torch.randperm(num_packs) seeded with seed + e (the
official per-epoch seeding), padded by wrapping to a multiple of world and strided across ranks
(rank, rank + world, ...): one pack per rank per step, a pure function of (seed, step, rank, world), so a resumed
run continues exactly. Packs themselves never change (the same images always train together).

`NiTPackDataset.batch_for(step, rank, world)` reads the pack's per-image latent files
`{'latent': (2, C, h, w) = [image, h-flip], 'label'}` and picks one of the two per image from a generator seeded by
(seed, step, rank); returns {'x': Float[N, C, p, p], 'hw_list': Int32[B, 2], 'label': Long[B], 'indices': Long[B],
'flip': Bool[B]}.
"""
from __future__ import annotations

import hashlib
import os
from typing import Mapping, Sequence

import torch

from datasets.nit_meta import read_data_meta, read_sampler_meta, token_lengths


def _seed(*parts: int) -> int:
    digest = hashlib.sha256(":".join(str(int(p)) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def _read_latent(path: str, i: int) -> dict:
    """One image's latent file {'latent', 'label'}, any defect named by the file and its data-meta index."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        data = load_file(path)
    except (SafetensorError, OSError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"latent file {path} (data-meta index {i}) cannot be read as safetensors ({first}); "
                         f"extract it again with extract_imagenet_feature.py") from None
    missing = [k for k in ("latent", "label") if k not in data]
    if missing:
        raise ValueError(f"latent file {path} (data-meta index {i}) lacks {missing} (it holds {sorted(data)}); "
                         f"expected {{'latent': (2, C, h, w), 'label'}} as extract_imagenet_feature.py writes it")
    if data["label"].numel() != 1:
        raise ValueError(f"latent file {path} (data-meta index {i}): 'label' must be one integer, got shape "
                         f"{list(data['label'].shape)}")
    return data


class PackOrder:
    """pack index for (step, rank); caches the current epoch's permutation."""

    def __init__(self, num_packs: int, world: int, seed: int = 0):
        if num_packs < 1 or world < 1:
            raise ValueError(f"need num_packs >= 1 and world >= 1, got {num_packs}, {world}")
        self.num_packs, self.world, self.seed = int(num_packs), int(world), int(seed)
        self.steps_per_epoch = -(-self.num_packs // self.world)
        self._epoch, self._perm = None, None

    def epoch_order(self, epoch: int) -> list[int]:
        if epoch != self._epoch:
            g = torch.Generator().manual_seed(self.seed + int(epoch))
            perm = torch.randperm(self.num_packs, generator=g).tolist()
            pad = self.steps_per_epoch * self.world - self.num_packs
            self._perm, self._epoch = perm + (perm * (pad // len(perm) + 1))[:pad], epoch
        return self._perm

    def __call__(self, step: int, rank: int) -> int:
        if not 0 <= rank < self.world:
            raise ValueError(f"rank {rank} outside 0..{self.world - 1}")
        epoch, i = divmod(int(step), self.steps_per_epoch)
        return self.epoch_order(epoch)[rank + i * self.world]


def pack_for(step: int, rank: int, world: int, seed: int, num_packs: int) -> int:
    """The pack rank `rank` of `world` trains on at `step` (see the module docstring)."""
    return PackOrder(num_packs, world, seed)(step, rank)


class NiTPackDataset:
    """data_meta / packs: paths or already-read lists. Latent file of an entry: latent_dirs[entry['type']] /
    entry['latent_file'] when latent_dirs is a mapping, else <latent_dirs>/<type>/<latent_file> (the layout
    extract_imagenet_feature.py writes)."""

    def __init__(self, data_meta: str | list[dict], packs: str | list[list[int]],
                 latent_dirs: str | Mapping[str, str], max_seq_len: int, patch_size: int = 1, seed: int = 0,
                 flip: bool = True):
        self.entries = read_data_meta(data_meta) if isinstance(data_meta, str) else list(data_meta)
        self.packs = read_sampler_meta(packs) if isinstance(packs, str) else [list(p) for p in packs]
        self.latent_dirs = latent_dirs
        self.max_seq_len, self.patch_size, self.seed, self.flip = int(max_seq_len), int(patch_size), int(seed), flip
        self.lengths = token_lengths(self.entries, patch_size)
        if not self.packs:
            raise ValueError("the sampler-meta holds no packs")
        self._order: PackOrder | None = None
        for j, pack in enumerate(self.packs):
            self._check_pack(j, pack)
        self._check_latent_dirs()

    def _check_latent_dirs(self) -> None:
        """A folder for every data type the data-meta names (a wrong latent_dirs fails here, not at some step)."""
        for t in sorted({e["type"] for e in self.entries}):
            if isinstance(self.latent_dirs, Mapping):
                if t not in self.latent_dirs:
                    raise ValueError(f"data.latent_dirs has no folder for data type {t!r} of the data-meta (it "
                                     f"names {sorted(self.latent_dirs)})")
                d = str(self.latent_dirs[t])
            else:
                d = os.path.join(self.latent_dirs, t)
            if not os.path.isdir(d):
                raise FileNotFoundError(f"latent folder {d} (data type {t!r} of the data-meta) not found under "
                                        f"data.latent_dirs")

    def _check_pack(self, j: int, pack: Sequence[int]) -> None:
        for i in pack:
            if not 0 <= i < len(self.entries):
                raise ValueError(f"pack {j} refers to image index {i}, the data-meta has {len(self.entries)} lines")
        total = sum(self.lengths[i] for i in pack)
        if total > self.max_seq_len:
            longest = max(pack, key=lambda i: self.lengths[i])
            raise ValueError(f"pack {j} holds {total} tokens > max_seq_len {self.max_seq_len}; its longest image "
                             f"is {self.entries[longest]['latent_file']} ({self.lengths[longest]} tokens, index "
                             f"{longest}); re-pack with scripts/pack_dataset.py --max-seq-len {self.max_seq_len}")

    def __len__(self) -> int:
        return len(self.packs)

    def latent_path(self, i: int) -> str:
        e = self.entries[i]
        if isinstance(self.latent_dirs, Mapping):
            if e["type"] not in self.latent_dirs:
                raise ValueError(f"no latent directory for data type {e['type']!r} (image {e['latent_file']})")
            return os.path.join(self.latent_dirs[e["type"]], e["latent_file"])
        return os.path.join(self.latent_dirs, e["type"], e["latent_file"])

    def load_pack(self, j: int, generator: torch.Generator) -> dict:
        pack = self.packs[j]
        flips = torch.randint(0, 2, (len(pack),), generator=generator).bool()
        if not self.flip:
            flips.zero_()
        p = self.patch_size
        tokens, hw, labels = [], [], []
        for i, f in zip(pack, flips.tolist()):
            path = self.latent_path(i)
            if not os.path.isfile(path):
                raise FileNotFoundError(f"latent file {path} (data-meta index {i}) not found: extract it with "
                                        "extract_imagenet_feature.py or point latent_dirs at the downloaded latents")
            data = _read_latent(path, i)
            lat, e = data["latent"], self.entries[i]
            if lat.dim() != 4 or lat.shape[0] != 2 or tuple(lat.shape[2:]) != (e["latent_h"], e["latent_w"]):
                raise ValueError(f"{path}: latent {list(lat.shape)} does not match (2, C, {e['latent_h']}, "
                                 f"{e['latent_w']}) from the data-meta")
            z = lat[int(f)]
            c, hh, ww = z.shape
            h, w = hh // p, ww // p
            tokens.append(z.reshape(c, h, p, w, p).permute(1, 3, 0, 2, 4).reshape(h * w, c, p, p))
            hw.append((h, w))
            labels.append(int(data["label"]))
        return {"x": torch.cat(tokens).float(), "hw_list": torch.tensor(hw, dtype=torch.int32),
                "label": torch.tensor(labels, dtype=torch.long), "indices": torch.tensor(pack, dtype=torch.long),
                "flip": flips}

    def pack_index(self, step: int, rank: int = 0, world: int = 1) -> int:
        if self._order is None or self._order.world != world:
            self._order = PackOrder(len(self.packs), world, self.seed)
        return self._order(step, rank)

    def batch_for(self, step: int, rank: int = 0, world: int = 1) -> dict:
        """The batch of `rank` at `step`: a pure function of (seed, step, rank, world) and the files."""
        j = self.pack_index(step, rank, world)
        return self.load_pack(j, torch.Generator().manual_seed(_seed(self.seed, step, rank)))

    def __getitem__(self, j: int) -> dict:
        """Pack j with flips seeded by (seed, j) (for map-style loaders; training uses batch_for)."""
        return self.load_pack(j, torch.Generator().manual_seed(_seed(self.seed, -1, j)))
