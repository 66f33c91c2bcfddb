"""Longest-pack-first histogram packing (LPFHP) of variable-length images into packs of at most L tokens, and the
assignment of dataset indices to the resulting pack shapes (NiT's `tools/pack_dataset.py`).

Algorithm (on the histogram of lengths, not on the images):
  for ℓ = L .. 1, n = number of images of length ℓ, offset = 0, while n > 0:
    - if open packs with exactly ℓ + offset free tokens exist: pop the most recently added group (c identical packs),
      repeat = min(1 + offset // ℓ, max_per_pack − len(pack)), lowered until n // repeat > 0;
      count = min(c, n // repeat); the c − count untouched packs go back (as the most recent group);
      n −= count·repeat; the new group (count, pack + [ℓ]·repeat) has offset − (repeat − 1)·ℓ free tokens;
      offset = 0
    - else offset += 1
    - if offset >= L − ℓ + 1 (fits in no open pack): repeat = min(L // ℓ, max_per_pack), lowered until
      n // repeat > 0; new group (n // repeat, [ℓ]·repeat) with L − ℓ·repeat free tokens; n −= (n // repeat)·repeat
      (offset is not reset: the remainder opens further new packs with a smaller repeat)
  A new group is closed when it has no free token or max_per_pack images, else it stays open.
  Output: closed groups then open ones, in the order their free-space keys first received a group; each pack
  listed with ascending lengths.
Indices: for every pack shape, repeated count times, each length takes the LAST not-yet-used dataset index of
that length.
"""
from __future__ import annotations

from typing import Sequence


def _add(store_closed: dict, store_open: dict, count: int, pack: list[int], free: int, max_per_pack: int) -> None:
    target = store_closed if free == 0 or len(pack) >= max_per_pack else store_open
    target.setdefault(free, []).append((count, pack))


def lpfhp(histogram: Sequence[int], max_len: int, max_per_pack: int | None = None) -> list[tuple[list[int], int]]:
    """histogram[ℓ − 1] = number of sequences of length ℓ (ℓ = 1..max_len) -> [(pack lengths ascending, count)]."""
    L = int(max_len)
    limit = L if max_per_pack is None else int(max_per_pack)
    if len(histogram) > L and any(histogram[L:]):
        raise ValueError(f"sequences longer than the pack length {L} cannot be packed")
    hist = list(histogram) + [0] * (L - len(histogram))
    closed: dict[int, list] = {}
    open_: dict[int, list] = {}
    for length in range(L, 0, -1):
        n = int(hist[length - 1])
        offset = 0
        while n > 0:
            key = length + offset
            if key in open_:
                c, pack = open_[key].pop()
                repeat = min(1 + offset // length, limit - len(pack))
                while n // repeat == 0:
                    repeat -= 1
                count = min(c, n // repeat)
                if c > count:
                    open_[key].append((c - count, pack))
                n -= count * repeat
                _add(closed, open_, count, pack + [length] * repeat, offset - (repeat - 1) * length, limit)
                if not open_[key]:
                    del open_[key]
                offset = 0
            else:
                offset += 1
            if offset >= L - length + 1:
                repeat = min(L // length, limit)
                while n // repeat == 0:
                    repeat -= 1
                count = n // repeat
                _add(closed, open_, count, [length] * repeat, L - length * repeat, limit)
                n -= count * repeat
    for key, groups in open_.items():
        closed.setdefault(key, []).extend(groups)
    return [(list(reversed(pack)), count) for groups in closed.values() for count, pack in groups]


def assign_indices(lengths: Sequence[int], shapes: list[tuple[list[int], int]]) -> list[list[int]]:
    """Pack shapes -> packs of dataset indices (each length takes the last unused index of that length)."""
    unused: dict[int, list[int]] = {}
    for i, n in enumerate(lengths):
        unused.setdefault(int(n), []).append(i)
    packs = []
    for shape, count in shapes:
        for _ in range(count):
            pack = []
            for n in shape:
                stack = unused.get(n)
                if not stack:
                    raise ValueError(f"pack shape {shape} needs another image of length {n}; none is left")
                pack.append(stack.pop())
            packs.append(pack)
    left = sum(len(s) for s in unused.values())
    if left:
        raise ValueError(f"{left} images were not placed in any pack")
    return packs


def pack_lengths(lengths: Sequence[int], max_len: int, max_per_pack: int | None = None,
                 names: Sequence[str] | None = None, split: int = 1, verbose: bool = True) -> list[list[int]]:
    """Dataset lengths -> packs of indices; with split = k, k consecutive chunks are packed independently
    (chunk sizes as numpy.array_split). Prints the packing efficiency (real tokens / (packs · L))."""
    for i, n in enumerate(lengths):
        if not 1 <= int(n) <= max_len:
            who = names[i] if names is not None else f"index {i}"
            raise ValueError(f"image {who} has {int(n)} tokens, outside 1..{max_len} (the pack length)")
    total = len(lengths)
    k = max(1, int(split))
    bounds, start = [], 0
    for j in range(k):
        size = total // k + (1 if j < total % k else 0)
        bounds.append((start, start + size))
        start += size
    packs: list[list[int]] = []
    for lo, hi in bounds:
        chunk = [int(n) for n in lengths[lo:hi]]
        if not chunk:
            continue
        hist = [0] * max_len
        for n in chunk:
            hist[n - 1] += 1
        shapes = lpfhp(hist, max_len, max_per_pack)
        packs += [[lo + i for i in pack] for pack in assign_indices(chunk, shapes)]
    if verbose:
        tokens = sum(int(n) for n in lengths)
        eff = tokens / (len(packs) * max_len) if packs else 0.0
        print(f"LPFHP: {total} images, {tokens} tokens -> {len(packs)} packs of {max_len}; "
              f"packing efficiency {100 * eff:.2f}%")
    return packs
