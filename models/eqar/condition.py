"""The equivariant column AR (models/eqar/model.py) as the model functions of the module-free sampler samplers/column_ar.py:
the condition function (the transformer: condition of the next token given the tokens so far) and the flow head.

Guidance as released: the batch is doubled with the label dropped (the `fake_latent` buffer) in rows B..2B−1, so
every condition is (2B, Dz) = [conditional; unconditional]; both halves are fed the same sampled token.

KV cache (`use_cache`): the band mask lets token i see only tokens i − cond_length..i in every layer, so the cache
keeps, per layer, the rotated keys/values of the last `cond_length` tokens, plus the buffer's cross-attention
keys/values (the buffer never attends to image tokens, so its track through the blocks is computed once). Without
it the whole zero-padded sequence of num_tokens is recomputed every step as the release does (O(N^2), same result).

Fast path (`fast_path`, default): the cache is preallocated and written in place (models/eqar/kv_cache.py) and the
flow head's Euler loop of a token runs as one function with its loop-invariant work hoisted (models/eqar/head_loop.py);
both are bit-identical to the module path step by step (fast_path=False), which stays as the reference.
"""
from __future__ import annotations

import torch
from torch import nn

from models.eqar.head_loop import HeadEuler
from models.eqar.kv_cache import PreallocatedStepper
from samplers.column_ar import ColumnARSettings, OfficialColumnStream, extend as column_ar_extend
from samplers.column_ar import sample as column_ar_sample


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


class _CachedStepper:
    """The transformer side of incremental decoding: condition of the next token given the tokens so far."""

    def __init__(self, net, buffer: torch.Tensor):
        self.net = net
        cond = net.z_proj_ln(buffer)
        self.cross, self.past = [], []
        for blk in net.encoder_blocks:
            self.cross.append(blk.cross_kv(cond))
            cond = blk.cond_step(cond)
            self.past.append((None, None))
        self.z = net.encoder_norm(cond)[:, -1]

    def push(self, token: torch.Tensor, position: int) -> torch.Tensor:
        net, w = self.net, self.net.cond_length
        x = net.z_proj_ln(net.z_proj(token))[:, None]
        cos, sin = net.rope(torch.tensor([position], device=token.device))
        for li, blk in enumerate(net.encoder_blocks):
            pk, pv = self.past[li]
            x, k, v = blk.token_step(x, cos, sin, pk, pv, self.cross[li])
            if w == 0:
                self.past[li] = (None, None)
            else:
                k = torch.cat([pk, k], dim=2) if pk is not None else k
                v = torch.cat([pv, v], dim=2) if pv is not None else v
                self.past[li] = (k[:, :, -w:], v[:, :, -w:])
        self.z = net.encoder_norm(x)[:, 0]
        return self.z


class EqarCondition:
    """condition(i, token) -> z_i of samplers.column_ar for `labels` Long[B]: z (B, Dz), or (2B, Dz) guided."""

    def __init__(self, model: nn.Module, labels: torch.Tensor, guided: bool, use_cache: bool, num_tokens: int,
                 fast: bool = False):
        net = _unwrap(model)
        b, device = labels.shape[0], labels.device
        self.net, self.guided, self.use_cache = net, bool(guided), bool(use_cache)
        if self.guided:
            rows = torch.cat([labels, labels])
            drop = torch.cat([torch.zeros(b, dtype=torch.bool, device=device),
                              torch.ones(b, dtype=torch.bool, device=device)])
        else:
            rows, drop = labels, None
        self.buffer = net.buffer(rows, drop)
        if self.use_cache:
            self.stepper = PreallocatedStepper(net, self.buffer, num_tokens) if fast else _CachedStepper(net, self.buffer)
        else:
            self.seq = torch.zeros(rows.shape[0], num_tokens, net.token_embed_dim, device=device,
                                   dtype=self.buffer.dtype)

    def __call__(self, i: int, token: torch.Tensor | None) -> torch.Tensor:
        if token is None:
            return self.stepper.z if self.use_cache else self.net.features(self.seq, self.buffer)[:, i]
        rows = torch.cat([token, token]) if self.guided else token
        if self.use_cache:
            return self.stepper.push(rows.to(self.buffer.dtype), i - 1)
        self.seq[:, i - 1] = rows.to(self.seq.dtype)
        return self.net.features(self.seq, self.buffer)[:, i]


@torch.no_grad()
def sample(model: nn.Module, labels: torch.Tensor, generators, settings: ColumnARSettings | None = None,
           num_tokens: int = 16, stream: OfficialColumnStream | None = None, **overrides) -> torch.Tensor:
    """Latents (B, num_tokens, C) for `labels` Long[B] (on the model's device) from an eqar module; `overrides`
    replace fields of `settings` (e.g. cfg=7.0, num_steps=100, fast_path=False). With `stream` the noise comes
    from it."""
    from dataclasses import replace
    settings = replace(settings or ColumnARSettings(), **overrides)
    settings.check()
    if labels.dim() != 1:
        raise ValueError(f"labels must be Long[B], got shape {list(labels.shape)}")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    net = _unwrap(model)
    condition, flow = _condition_and_flow(model, net, labels, settings, num_tokens)
    return column_ar_sample(condition, net.diffloss.net, generators, settings, rows=labels.shape[0],
                            channels=net.token_embed_dim, num_tokens=num_tokens, device=labels.device, stream=stream,
                            flow=flow)



def _condition_and_flow(model, net, labels, settings: ColumnARSettings, num_tokens: int):
    """The condition function and (fast path) the fused flow-head integrator of one sampling call."""
    guided, fast = settings.cfg != 1.0, settings.fast_path
    condition = EqarCondition(model, labels, guided, settings.use_cache, num_tokens, fast)
    flow = HeadEuler(net.diffloss.net, labels.shape[0], settings.num_steps, guided, labels.device,
                     settings.batched_head, loop=net.fused_flow) if fast else None
    return condition, flow


@torch.no_grad()
def extend(model: nn.Module, labels: torch.Tensor, generators, settings: ColumnARSettings, prefix: torch.Tensor,
           kept: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """Latents (B, num_tokens, C) whose row r starts with prefix[r, :kept[r]] (the model's normalised space, as
    `sample` returns), the rest sampled (samplers.column_ar.extend)."""
    settings.check()
    if labels.dim() != 1:
        raise ValueError(f"labels must be Long[B], got shape {list(labels.shape)}")
    net = _unwrap(model)
    condition, flow = _condition_and_flow(model, net, labels, settings, num_tokens)
    return column_ar_extend(condition, net.diffloss.net, generators, settings, prefix=prefix, kept=kept,
                            num_tokens=num_tokens, device=labels.device, flow=flow)
