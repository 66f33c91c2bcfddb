"""Incremental decoding of the equivariant column AR with a preallocated KV cache (the fast sampling path).

Token i attends to tokens i - cond_length..i in every layer, so per layer the cache holds the rotated keys and values
of a window. They live in one tensor (depth, rows, heads, capacity, head_dim) allocated at the first token and
written in place: the new token's key goes to the next slot and attention reads the slots of its window, oldest
first, the key order and matmul shapes of the concatenating cache (models.eqar.condition._CachedStepper), so the
conditions come out bit-identical to it. When the slots run out (runs longer than the capacity), the last
cond_length entries move to the front: one copy per `capacity - cond_length` tokens, memory bounded for any length.
The buffer's track (cross-attention keys/values and the condition of token 0) is the concatenating stepper's.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.eqar.model import apply_rope
from models.layers import attention

SPARE_SLOTS = 64  # slots past the window before entries move to the front


class PreallocatedStepper:
    """push(token (R, C), position) -> condition (R, D) of the next token; `z` holds the latest one."""

    def __init__(self, net, buffer: torch.Tensor, num_tokens: int):
        self.net, self.window = net, int(net.cond_length)
        self.heads, self.head_dim = net.num_heads, net.head_dim
        cond = net.z_proj_ln(buffer)
        self.cross = []
        for blk in net.encoder_blocks:
            self.cross.append(blk.cross_kv(cond))
            cond = blk.cond_step(cond)
        self.z = net.encoder_norm(cond)[:, -1]
        self.capacity = max(1, min(int(num_tokens), 2 * self.window + SPARE_SLOTS))
        self.keys = self.values = None
        self.filled = 0  # slots in use
        self.layers = [self._weights(blk) for blk in net.encoder_blocks]

    @staticmethod
    def _weights(blk):
        a, c, m = blk.attn, blk.attn2, blk.mlp
        return ((blk.norm1.weight, blk.norm1.bias, blk.norm1.eps), (a.qkv.weight, a.qkv.bias),
                (a.proj.weight, a.proj.bias),
                (blk.cross_norm.weight, blk.cross_norm.bias, blk.cross_norm.eps), (c.qkv.weight, c.qkv.bias),
                (c.proj.weight, c.proj.bias), (blk.norm2.weight, blk.norm2.bias, blk.norm2.eps),
                (m.fc1.weight, m.fc1.bias), (m.fc2.weight, m.fc2.bias), m.act.approximate)

    def _slot(self, like: torch.Tensor) -> int:
        """Index of the next free slot (allocating the cache, or moving the window to the front, as needed)."""
        if self.keys is None:
            shape = (len(self.layers), like.shape[0], self.heads, self.capacity, self.head_dim)
            self.keys = like.new_empty(shape)
            self.values = like.new_empty(shape)
        if self.filled == self.capacity:
            w = self.window
            if w:
                self.keys[:, :, :, :w] = self.keys[:, :, :, -w:].clone()
                self.values[:, :, :, :w] = self.values[:, :, :, -w:].clone()
            self.filled = w
        self.filled += 1
        return self.filled - 1

    def push(self, token: torch.Tensor, position: int) -> torch.Tensor:
        net = self.net
        x = net.z_proj_ln(net.z_proj(token))[:, None]
        r, d = x.shape[0], x.shape[-1]
        h, hd = self.heads, self.head_dim
        cos, sin = net.rope(torch.tensor([position], device=token.device))
        slot, lo = None, None
        for li, (n1, qkv_w, proj_w, cn, cq_w, cproj_w, n2, fc1, fc2, approx) in enumerate(self.layers):
            qkv = F.linear(F.layer_norm(x, (d,), n1[0], n1[1], n1[2]), *qkv_w).reshape(r, 1, 3, h, hd)
            qk = apply_rope(qkv[:, :, :2], cos, sin)  # q and k in one call: the same elementwise products
            q, k, v = qk[:, :, 0].transpose(1, 2), qk[:, :, 1].transpose(1, 2), qkv[:, :, 2].transpose(1, 2)
            if slot is None:
                slot = self._slot(k)
                lo = max(0, slot - self.window)
            self.keys[li, :, :, slot] = k[:, :, 0]
            self.values[li, :, :, slot] = v[:, :, 0]
            o = attention(q, self.keys[li, :, :, lo:slot + 1], self.values[li, :, :, lo:slot + 1])
            x = x + F.linear(o.transpose(1, 2).reshape(r, 1, d), *proj_w)
            cq = F.linear(F.layer_norm(x, (d,), cn[0], cn[1], cn[2]), *cq_w).reshape(r, 1, h, hd).transpose(1, 2)
            o = attention(apply_rope(cq, cos, sin), *self.cross[li])
            x = x + F.linear(o.transpose(1, 2).reshape(r, 1, d), *cproj_w)
            x = x + F.linear(F.gelu(F.linear(F.layer_norm(x, (d,), n2[0], n2[1], n2[2]), *fc1), approximate=approx),
                             *fc2)
        self.z = net.encoder_norm(x)[:, 0]
        return self.z


__all__ = ["PreallocatedStepper"]
