"""Incremental decoding of the equivariant column AR with a preallocated KV cache (the fast sampling path).

Token i attends to tokens i - cond_length..i in every layer, so per layer the cache holds the rotated keys and values
of a window. They live in one tensor (depth, rows, heads, capacity, head_dim) allocated at the first token; the new
token's keys of all layers go to the next slot in one write. The per-token work is one pure function,
`token_step`: the token through z_proj and every block given the window's past keys/values, returning its condition
and its own keys/values. Nothing in it depends on the step count or writes to its inputs, so `sample.compile`
compiles it as a whole (EquivariantAR.fused_step; on CUDA one graph replay per token); tokens before the window has
filled (their past is shorter, a one-off shape) call it eagerly.
Attention reads past + own key, oldest first, the key order and matmul shapes of the concatenating cache
(models.eqar.condition._CachedStepper), and RoPE is the same products in fewer operations, so the conditions come out
bit-identical to it. When the slots run out (runs longer than the capacity), the last cond_length entries move to
the front: one copy per `capacity - cond_length` tokens, memory bounded for any length. The buffer's track
(cross-attention keys/values and the condition of token 0) is the concatenating stepper's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.eqar.head_loop import autocast_cast
from models.layers import attention

SPARE_SLOTS = 64  # slots past the window before entries move to the front


def rope_pairs(cos: torch.Tensor, sin: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RoPE tables (N, d/2) interleaved to (N, d): C = (c0, c0, c1, c1, ..), S = (-s0, s0, -s1, s1, ..)."""
    return torch.stack([cos, cos], -1).flatten(-2), torch.stack([-sin, sin], -1).flatten(-2)


def rotate(x: torch.Tensor, c: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """models.eqar.model.apply_rope bit for bit in 4 operations instead of 8: x*C + swap(x)*S gives a*cos - b*sin
    and b*cos + a*sin from the same rounded products (a negated product is exact, a sum of two commutes)."""
    xf = x.float()
    return (xf * c + xf.unflatten(-1, (-1, 2)).flip(-1).flatten(-2) * s).to(x.dtype)


def step_weights(net, device) -> tuple:
    """The tensors (and constants) `token_step` reads, gathered once per sampling call (linears' weights in the
    autocast dtype when autocast is on: cast once, not at every token)."""
    lp = autocast_cast(device)

    def ln(m):
        return (m.weight, m.bias, m.eps)

    def lin(m):
        return (lp(m.weight), lp(m.bias))

    layers = []
    for blk in net.encoder_blocks:
        a, c, m = blk.attn, blk.attn2, blk.mlp
        layers.append((ln(blk.norm1), lin(a.qkv), lin(a.proj), ln(blk.cross_norm), lin(c.qkv), lin(c.proj),
                       ln(blk.norm2), lin(m.fc1), lin(m.fc2), m.act.approximate))
    return (lin(net.z_proj), ln(net.z_proj_ln), ln(net.encoder_norm), tuple(layers), net.num_heads)


def token_step(weights: tuple, token: torch.Tensor, c: torch.Tensor, s: torch.Tensor, past_k: torch.Tensor,
               past_v: torch.Tensor, cross: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """token (R, C) at the position of RoPE tables c, s (1, head_dim); past keys/values (depth, R, H, w, head_dim)
    (w may be 0); cross: per layer the buffer's (k, v). Returns the condition of the next token (R, D) and this
    token's rotated keys and values (depth, R, H, head_dim)."""
    zp, zln, enc, layers, h = weights
    x = F.layer_norm(F.linear(token, *zp), (zp[0].shape[0],), *zln)[:, None]
    r, d = x.shape[0], x.shape[-1]
    hd = d // h
    new_k, new_v = [], []
    for li, (n1, qkv_w, proj_w, cn, cq_w, cproj_w, n2, fc1, fc2, approx) in enumerate(layers):
        qkv = F.linear(F.layer_norm(x, (d,), *n1), *qkv_w).reshape(r, 1, 3, h, hd)
        qk = rotate(qkv[:, :, :2], c, s)  # q and k in one call: the same elementwise products
        q, k, v = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
        new_k.append(k[:, :, 0])
        new_v.append(v[:, :, 0])
        if past_k.shape[3]:
            k, v = torch.cat([past_k[li], k], dim=2), torch.cat([past_v[li], v], dim=2)
        x = x + F.linear(attention(q, k, v).transpose(1, 2).reshape(r, 1, d), *proj_w)
        cq = F.linear(F.layer_norm(x, (d,), *cn), *cq_w).reshape(r, 1, h, hd).transpose(1, 2)
        o = attention(rotate(cq, c, s), *cross[li])
        x = x + F.linear(o.transpose(1, 2).reshape(r, 1, d), *cproj_w)
        x = x + F.linear(F.gelu(F.linear(F.layer_norm(x, (d,), *n2), *fc1), approximate=approx), *fc2)
    return F.layer_norm(x, (d,), *enc)[:, 0], torch.stack(new_k), torch.stack(new_v)


class PreallocatedStepper:
    """push(token (R, C), position) -> condition (R, D) of the next token; `z` holds the latest one."""

    def __init__(self, net, buffer: torch.Tensor, num_tokens: int):
        self.net, self.window = net, int(net.cond_length)
        cond = net.z_proj_ln(buffer)
        self.cross = []
        for blk in net.encoder_blocks:
            self.cross.append(blk.cross_kv(cond))
            cond = blk.cond_step(cond)
        self.cross = tuple(self.cross)
        self.z = net.encoder_norm(cond)[:, -1]
        self.capacity = max(1, min(int(num_tokens), 2 * self.window + SPARE_SLOTS))
        self.keys = self.values = None
        self.filled = 0  # slots in use
        self.weights = step_weights(net, buffer.device)

    def _slot(self) -> int:
        """Index of the next free slot (moving the window to the front when the slots have run out)."""
        if self.filled == self.capacity:
            w = self.window
            if w:
                self.keys[:, :, :, :w] = self.keys[:, :, :, -w:].clone()
                self.values[:, :, :, :w] = self.values[:, :, :, -w:].clone()
            self.filled = w
        self.filled += 1
        return self.filled - 1

    def push(self, token: torch.Tensor, position: int) -> torch.Tensor:
        c, s = rope_pairs(*self.net.rope(torch.tensor([position], device=token.device)))
        slot = self._slot()
        lo = max(0, slot - self.window)
        if self.keys is None:  # first token: nothing to attend to but itself; the cache takes its keys' dtype
            past_k = past_v = token.new_empty(0, 0, 0, 0, 0)
        else:
            past_k, past_v = self.keys[:, :, :, lo:slot], self.values[:, :, :, lo:slot]
        # the steady state (a full window) is the one shape a compiled step sees; shorter windows run eagerly
        step = self.net.fused_step if slot - lo == self.window else token_step
        self.z, k, v = step(self.weights, token, c, s, past_k, past_v, self.cross)
        if self.keys is None:
            shape = (k.shape[0], k.shape[1], k.shape[2], self.capacity, k.shape[3])
            self.keys, self.values = k.new_empty(shape), v.new_empty(shape)
        self.keys[:, :, :, slot] = k
        self.values[:, :, :, slot] = v
        return self.z


__all__ = ["PreallocatedStepper", "token_step", "step_weights", "rope_pairs", "rotate"]
