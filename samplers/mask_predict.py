"""Mask-predict sampling (MaskGIT / AutoNAT / ENAT) as a function of a model function.

Model-function protocol
  `model_fn(ids Long[B', L], labels Long[B']) -> logits Float[B', L, V]`, V = codebook size, mask id = V.
  If `model_fn` has a callable `reset()`, it is called once before step 0 (after wrapping for guidance, the wrapper
  forwards it). Nothing else is passed: a stateful model function (e.g. ENAT's feature reuse) derives what it needs
  from its inputs — visible positions are `ids != V`, and it is called exactly once per step with the rows in the
  same order every step. With guidance the call holds 2B rows: conditional rows 0..B−1, unconditional rows B..2B−1.

Algorithm, step t = 0..T−1 (official AutoNAT `generate`, extended to any grid, any T, per-row randomness):
  1. logits = u + w_t·(c − u), w_t = 1 + s_t (samplers.guidance; s_t = strategy.cfg[t], the official scale of
     c + s·(c − u)), one batched forward of 2B rows, if `null_label` is given; else one forward of B rows.
  2. Sample every position from Categorical(softmax(logits / max(τs_t, min_temp))); visible positions keep their id.
  3. Last step: return the sampled ids. Otherwise
     confidence = log_softmax(logits)[sampled id] (temperature 1), +inf at visible positions, + τg_t·Gumbel(0, 1);
     mask_len = max(1, min(#masked_row − 1, floor(L·r_t))), per row;
     rule 'ties'  (AutoNAT): cutoff = sorted_confidence[mask_len − 1], re-mask every position with conf <= cutoff;
     rule 'exact' (ENAT, every row the same count): re-mask exactly the mask_len lowest confidences (a stable sort
                  breaks ties by position).
  ENAT's formula (log_softmax after guidance, sampling from Categorical(logp / τs), confidence = logp of the sampled
  token + Gumbel) is the same computation: logp / τ differs from logits / τ by a per-position constant, so both
  define the same distribution; use `Strategy.enat_cosine` (which already floors τs at 1e-3) and rule='exact'.
  The official code takes #masked from row 0 for the whole batch; here it is per row so that rows stay independent
  (identical whenever no confidence ties occur, i.e. almost surely when τg > 0).

Randomness (default, `generators`): at every step each row i draws exactly 2·L float32 uniforms from generators[i]
(`torch.rand((2, L), generator=generators[i])`): row 0 drives token sampling by inverse CDF (one uniform per
position), row 1 the Gumbel noise −log(−log u). The count is fixed (also at the last step and when τg = 0), so a
call consumes 2·L·T draws per row and row i's result depends only on its generator, its label and the model.

Randomness `rng=OfficialStream(seed, variant)` (samplers/official_stream.py, `sample.rng: official`): the official
single-process stream instead — per step, the tokens of the whole batch by Categorical(...).sample() on a torch
generator, then τg·Gumbel noise of shape [B, L] from a numpy RandomState (drawn at the last step too, with τg = 0).
The variant picks the official sampling logits: 'autonat' logits / max(τs, min_temp), 'enat'
log_softmax(logits) / max(τs, min_temp). With rule='exact' and the ENAT cosine schedule the clamp of mask_len above
is inactive whenever the targets fall by at least one token per step (e.g. T = 8 for L >= 16), so this replays the
official ENAT loop, which masks floor(L·cos(π(s+1)/2T)) tokens unclamped.

Editing (`known` Long[B, L], `keep` Bool[B, L]; MaskGIT inpainting): the kept positions hold their known ids from
step 0 on and are never re-masked; only the E_b = #editable positions of row b are predicted, and the schedule
counts those alone: the target after step t is floor(E_b·r_t) (mask_len = max(1, min(#masked_row − 1, ·)), 0 for a
row with nothing to edit). The random draws are those of plain sampling (2·L uniforms per row and step), so
keep all False is plain sampling bit for bit, and keep all True returns `known`.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from samplers.guidance import ClassifierFreeGuidance, weight_from_s
from core.seeding import check_generators, uniform_rows
from samplers.official_stream import OfficialStream
from samplers.strategy import Strategy

RULES = ("ties", "exact")
_TINY = 1e-20  # keeps −log(−log u) finite at u = 0


def inverse_cdf_sample(logits: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Categorical(softmax(logits)) over the last dim with one uniform per distribution: Long[...]."""
    cdf = torch.softmax(logits.float(), dim=-1).cumsum(dim=-1)
    target = (u * cdf[..., -1]).unsqueeze(-1)  # scale by the total so float rounding of the sum cannot bias
    idx = torch.searchsorted(cdf.contiguous(), target.contiguous(), right=True).squeeze(-1)
    return idx.clamp_(max=logits.shape[-1] - 1)


def gumbel_from_uniform(u: torch.Tensor) -> torch.Tensor:
    return -torch.log(-torch.log(u.clamp(min=_TINY)))


def remask(confidence: torch.Tensor, mask_len: torch.Tensor, rule: str) -> torch.Tensor:
    """Bool[B, L]: positions to mask again, the mask_len[b] lowest confidences of each row (see module doc)."""
    if rule == "ties":
        cutoff = confidence.sort(dim=-1).values.gather(1, (mask_len - 1).unsqueeze(1))
        return confidence <= cutoff
    rank = confidence.argsort(dim=-1, stable=True).argsort(dim=-1)
    return rank < mask_len.unsqueeze(1)


@torch.no_grad()
def sample(model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], labels: torch.Tensor,
           generators: Sequence[torch.Generator] | None = None, *, seq_len: int, codebook_size: int,
           strategy: Strategy, null_label: int | None = None, rule: str = "ties", min_temp: float = 1e-4,
           rng: OfficialStream | None = None, known: torch.Tensor | None = None,
           keep: torch.Tensor | None = None) -> torch.Tensor:
    """Generate Long[B, seq_len] token ids in [0, codebook_size) for `labels` Long[B] (on the model's device).

    null_label: None = no guidance (one forward per step, strategy.cfg unused); an int = classifier-free guidance
    with the strategy's per-step scales, conditional and unconditional rows in one batched forward.
    rule: 'ties' (AutoNAT, re-mask conf <= cutoff) or 'exact' (ENAT, exactly mask_len per row).
    min_temp: floor of the sampling temperature (AutoNAT 1e-4).
    generators / rng: exactly one — per-row generators (one CPU torch.Generator per row, the default) or an
    OfficialStream replaying the official single-process random stream (see the module doc).
    known / keep: editing (see the module doc): Long[B, seq_len] ids and Bool[B, seq_len], True = keep known.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
    if not isinstance(strategy, Strategy):
        raise TypeError(f"strategy must be a samplers.Strategy, got {type(strategy).__name__}")
    if labels.dim() != 1:
        raise ValueError(f"labels must be Long[B], got shape {list(labels.shape)}")
    b, device, mask_id = labels.shape[0], labels.device, codebook_size
    if rng is None:
        if generators is None:
            raise ValueError("need one torch.Generator per row (generators=...) or rng=OfficialStream(seed)")
        check_generators(generators, b)
    elif generators is not None:
        raise ValueError("give either per-row generators or rng=OfficialStream(...), not both")
    elif not isinstance(rng, OfficialStream):
        raise TypeError(f"rng must be a samplers.OfficialStream, got {type(rng).__name__}")
    fn = ClassifierFreeGuidance(model_fn, null_label) if null_label is not None else model_fn
    reset = getattr(fn, "reset", None)
    if callable(reset):
        reset()

    ids = torch.full((b, seq_len), mask_id, dtype=torch.long, device=device)
    if (known is None) != (keep is None):
        raise ValueError("editing needs both known (token ids) and keep (Bool mask), or neither")
    if keep is None:
        targets = torch.tensor(strategy.masked_after(seq_len), dtype=torch.long, device=device).expand(b, -1)
    else:
        if tuple(known.shape) != (b, seq_len) or tuple(keep.shape) != (b, seq_len) or keep.dtype != torch.bool:
            raise ValueError(f"known must be Long[{b}, {seq_len}] and keep Bool[{b}, {seq_len}], got "
                             f"{list(known.shape)} and {keep.dtype} {list(keep.shape)}")
        known, keep = known.to(device), keep.to(device)
        if bool(((known < 0) | (known >= codebook_size))[keep].any()):
            raise ValueError(f"known ids at kept positions must lie in [0, {codebook_size})")
        ids = torch.where(keep, known, ids)
        editable = (~keep).sum(dim=1).tolist()  # the schedule counts the editable tokens of each row
        targets = torch.tensor([strategy.masked_after(e) for e in editable], dtype=torch.long, device=device)
    last = strategy.steps - 1
    for t in range(strategy.steps):
        u = uniform_rows(generators, (2, seq_len), device) if rng is None else None
        logits = fn(ids, labels, weight_from_s(strategy.cfg[t])) if null_label is not None else fn(ids, labels)
        if tuple(logits.shape) != (b, seq_len, codebook_size):
            raise ValueError(f"model_fn returned logits of shape {list(logits.shape)}, expected "
                             f"[{b}, {seq_len}, {codebook_size}] (batch, tokens, codebook size)")
        logits = logits.float()
        unknown = ids == mask_id
        temp = max(strategy.samp_temp[t], min_temp)
        if rng is None:
            sampled = inverse_cdf_sample(logits / temp, u[:, 0])
        else:
            sampled = rng.tokens(logits, temp)
            noise = rng.gumbel(strategy.mask_temp[t] if t < last else 0.0, (b, seq_len), device)
        sampled = torch.where(unknown, sampled, ids)
        if t == last:
            break
        conf = torch.log_softmax(logits, dim=-1).gather(-1, sampled.unsqueeze(-1)).squeeze(-1)
        conf = torch.where(unknown, conf, torch.full_like(conf, float("inf")))
        conf = conf + (strategy.mask_temp[t] * gumbel_from_uniform(u[:, 1]) if rng is None else noise)
        n_masked = unknown.sum(dim=1)
        mask_len = torch.clamp(torch.minimum(n_masked - 1, targets[:, t]), min=1)
        again = remask(conf, mask_len, rule)
        if keep is not None:  # a row with nothing left to predict re-masks nothing (its kept ids have conf +inf)
            again = again & (n_masked > 0).unsqueeze(1)
        ids = torch.where(again, torch.full_like(sampled, mask_id), sampled)
    return sampled
