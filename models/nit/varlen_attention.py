"""Block-diagonal ("varlen") self-attention over a packed token sequence: each token attends only to the tokens of
its own segment (image), with scale head_dim^-0.5, no dropout, non-causal.

Inputs q, k, v: (N, H, D) with the segments concatenated along dim 0; `Segments` describes the split.

Backends (`varlen_attention(..., backend=None)` follows the process-wide choice):
  'auto'    flash-attn's `flash_attn_varlen_func` when it imports and q is a CUDA fp16/bf16 tensor, else 'runs'
  'flash'   as 'auto' (the same rule; never required, falls back to 'runs' when unusable)
  'runs'    one SDPA call per run of consecutive equal-length segments, on views (no copy). LPFHP packs list their
            images by ascending length, so a pack of 64/256/1024-token images costs about 3 calls
  'loop'    one SDPA call per segment
  'grouped' segments gathered by length, one SDPA call per distinct length (pays a gather/scatter copy)
  'dense'   one SDPA call with an (N, N) boolean block-diagonal mask: the reference in tests, quadratic memory
CPU measurements (scripts/bench_varlen.py, 4096 tokens = 2×1024 + 6×256 + 8×64, 16 heads × 72, 2 threads, shared
machine): 'runs', 'loop' and 'grouped' within 1.0-1.6x of each other (run-to-run noise is of that size), 'dense'
5-10x slower, SDPA on jagged nested tensors and flex attention with a document mask (unfused on CPU) 35-95x
slower, so those two are not offered. 'runs' is the default torch path: never worse than 'loop' beyond noise and
one call per run when images of one size are adjacent. The torch paths never build an N×N mask except 'dense'.
`NIT_VARLEN_BACKEND=<name>` sets the process-wide default, `set_varlen_backend()` /
`varlen_backend()` change it at run time (tests force the torch fallback with them): models.backend_switch.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from models.backend_switch import BackendSwitch

BACKENDS = ("auto", "flash", "runs", "grouped", "loop", "dense")
SWITCH = BackendSwitch("varlen attention backend", BACKENDS, "auto", env="NIT_VARLEN_BACKEND")
set_varlen_backend = SWITCH.set
get_varlen_backend = SWITCH.get
varlen_backend = SWITCH.use
# None = not probed; False = unusable here; else flash_attn_varlen_func
_flash_fn = None


def _load_flash():
    global _flash_fn
    if _flash_fn is None:
        try:
            from flash_attn import flash_attn_varlen_func  # optional GPU dependency
            _flash_fn = flash_attn_varlen_func
        except Exception:  # broken builds raise anything at import
            _flash_fn = False
    return _flash_fn


@dataclass
class Segments:
    """Segment lengths of a pack, with what each backend needs computed once per forward (not once per layer)."""
    lengths: tuple[int, ...]
    device: torch.device
    cu_seqlens: torch.Tensor = field(init=False)
    max_seqlen: int = field(init=False)
    _groups: list | None = field(default=None, init=False, repr=False)
    _runs: list | None = field(default=None, init=False, repr=False)

    def __post_init__(self):
        self.lengths = tuple(int(n) for n in self.lengths)
        if not self.lengths or min(self.lengths) < 1:
            raise ValueError(f"segments need positive lengths, got {self.lengths}")
        cu = [0]
        for n in self.lengths:
            cu.append(cu[-1] + n)
        self.cu_seqlens = torch.tensor(cu, dtype=torch.int32, device=self.device)
        self.max_seqlen = max(self.lengths)

    @classmethod
    def from_hw(cls, hw_list: torch.Tensor | list, device=None) -> "Segments":
        hw = hw_list.tolist() if torch.is_tensor(hw_list) else [list(r) for r in hw_list]
        dev = device if device is not None else (hw_list.device if torch.is_tensor(hw_list) else "cpu")
        return cls(tuple(int(h) * int(w) for h, w in hw), torch.device(dev))

    @property
    def total(self) -> int:
        return int(sum(self.lengths))

    def groups(self) -> list[tuple[int, torch.Tensor | None]]:
        """[(length, token index Long[n_seg, length] or None when the group is the whole pack in order)]."""
        if self._groups is None:
            starts = self.cu_seqlens[:-1].tolist()
            by_len: dict[int, list[int]] = {}
            for s, n in zip(starts, self.lengths):
                by_len.setdefault(n, []).append(s)
            if len(by_len) == 1:
                self._groups = [(self.lengths[0], None)]
            else:
                self._groups = []
                for n, st in by_len.items():
                    idx = torch.tensor(st, device=self.device)[:, None] + torch.arange(n, device=self.device)
                    self._groups.append((n, idx))
        return self._groups

    def runs(self) -> list[tuple[int, int, int]]:
        """[(start token, segment length, number of consecutive segments of that length)]."""
        if self._runs is None:
            runs, start = [], 0
            for n in self.lengths:
                if runs and runs[-1][1] == n:
                    runs[-1][2] += 1
                else:
                    runs.append([start, n, 1])
                start += n
            self._runs = [tuple(r) for r in runs]
        return self._runs

    def segment_ids(self) -> torch.Tensor:
        return torch.repeat_interleave(torch.arange(len(self.lengths), device=self.device),
                                       torch.tensor(self.lengths, device=self.device))


def _sdpa(q, k, v):
    # (B, L, H, D) -> SDPA over (B, H, L, D) -> (B, L, H, D)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))
    return out.transpose(1, 2)


def _grouped(q, k, v, seg: Segments):
    n, h, d = q.shape
    groups = seg.groups()
    if groups[0][1] is None:
        b, length = len(seg.lengths), groups[0][0]
        return _sdpa(q.view(b, length, h, d), k.view(b, length, h, d), v.view(b, length, h, d)).reshape(n, h, d)
    out = q.new_empty(n, h, d)
    for _, idx in groups:
        o = _sdpa(q[idx], k[idx], v[idx])  # (n_seg, length, H, D)
        out[idx.reshape(-1)] = o.reshape(-1, h, d)
    return out


def _loop(q, k, v, seg: Segments):
    outs, start = [], 0
    for length in seg.lengths:
        sl = slice(start, start + length)
        outs.append(_sdpa(q[None, sl], k[None, sl], v[None, sl])[0])
        start += length
    return torch.cat(outs)


def _runs(q, k, v, seg: Segments):
    n, h, d = q.shape
    outs = []
    for start, length, count in seg.runs():
        sl = slice(start, start + length * count)
        outs.append(_sdpa(q[sl].view(count, length, h, d), k[sl].view(count, length, h, d),
                          v[sl].view(count, length, h, d)).reshape(count * length, h, d))
    return outs[0] if len(outs) == 1 else torch.cat(outs)


def _dense(q, k, v, seg: Segments):
    ids = seg.segment_ids()
    mask = ids[:, None] == ids[None, :]
    out = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None], v.transpose(0, 1)[None],
                                         attn_mask=mask)
    return out[0].transpose(0, 1)


_TORCH_PATHS = {"runs": _runs, "grouped": _grouped, "loop": _loop, "dense": _dense}


def flash_usable(q: torch.Tensor) -> bool:
    return q.is_cuda and q.dtype in (torch.float16, torch.bfloat16) and bool(_load_flash())


def varlen_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segments,
                     backend: str | None = None) -> torch.Tensor:
    """(N, H, D) q/k/v of a pack -> (N, H, D); token i attends to the tokens of its own segment only."""
    name = SWITCH.pick(backend)
    if q.shape[0] != seg.total:
        raise ValueError(f"pack has {q.shape[0]} tokens but its segments sum to {seg.total}")
    if name in ("auto", "flash"):
        if flash_usable(q):
            return _flash_fn(q, k, v, seg.cu_seqlens, seg.cu_seqlens, seg.max_seqlen, seg.max_seqlen)
        name = "runs"
    return _TORCH_PATHS[name](q, k, v, seg)
