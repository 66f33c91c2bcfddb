"""Per-token rectified-flow head of the equivariant column AR (MAR's AdaLN residual MLP, trained as a flow).

Names follow the release (`diffloss.net.time_embed.mlp.0/2`, `cond_embed`, `input_proj`, `res_blocks.{i}.in_ln /
mlp.0 / mlp.2 / adaLN_modulation.1`, `final_layer.linear / adaLN_modulation.1`). Differences from MAR's head: the
output has `target_channels` (no learned variance) and the time input is raw t in [0, 1] (not x1000).

Flow convention (t = 1 is noise): x_t = t*eps + (1 - t)*x0, velocity target v = eps - x0, and sampling integrates
dx/dt = v from t = 1 to 0 with Euler steps evaluated at t = i/N, i = N..1.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from models.layers import timestep_embedding

T_EPS = 1e-5  # t <- t(1 - T_EPS) + T_EPS keeps the training time away from 0


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden: int, freq_dim: int = 256):
        super().__init__()
        self.freq_dim = freq_dim
        self.mlp = nn.Sequential(nn.Linear(freq_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden))

    def forward(self, t):
        return self.mlp(timestep_embedding(t, self.freq_dim).to(self.mlp[0].weight.dtype))


def _modulate(x, shift, scale):
    return x * (1 + scale) + shift


class ResBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.in_ln = nn.LayerNorm(c, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(c, c), nn.SiLU(), nn.Linear(c, c))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c, 3 * c))

    def forward(self, x, y):
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(_modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, c: int, out: int):
        super().__init__()
        self.norm_final = nn.LayerNorm(c, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(c, out)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(c, 2 * c))

    def forward(self, x, y):
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    """velocity(x_t (N, C), t (N,), z (N, Dz)) -> (N, C)."""

    def __init__(self, in_channels: int, model_channels: int, out_channels: int, z_channels: int, num_res_blocks: int,
                 grad_checkpointing: bool = False):
        super().__init__()
        self.grad_checkpointing = grad_checkpointing
        self.time_embed = TimestepEmbedder(model_channels)
        self.cond_embed = nn.Linear(z_channels, model_channels)
        self.input_proj = nn.Linear(in_channels, model_channels)
        self.res_blocks = nn.ModuleList([ResBlock(model_channels) for _ in range(num_res_blocks)])
        self.final_layer = FinalLayer(model_channels, out_channels)
        self.initialize_weights()

    def initialize_weights(self):
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        # zero modulations and output: every residual block starts as the identity and the head predicts 0
        for blk in self.res_blocks:
            nn.init.zeros_(blk.adaLN_modulation[-1].weight)
            nn.init.zeros_(blk.adaLN_modulation[-1].bias)
        for p in (self.final_layer.adaLN_modulation[-1].weight, self.final_layer.adaLN_modulation[-1].bias,
                  self.final_layer.linear.weight, self.final_layer.linear.bias):
            nn.init.zeros_(p)

    def forward(self, x, t, c):
        x = self.input_proj(x)
        y = self.time_embed(t) + self.cond_embed(c)
        for blk in self.res_blocks:
            if self.grad_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(blk, x, y, use_reentrant=False)
            else:
                x = blk(x, y)
        return self.final_layer(x, y)


class DiffLoss(nn.Module):
    """Holds `net` (so names read diffloss.net.*) and the rectified-flow training objective."""

    def __init__(self, target_channels: int, z_channels: int, depth: int, width: int, grad_checkpointing: bool = False):
        super().__init__()
        self.in_channels = target_channels
        self.net = SimpleMLPAdaLN(target_channels, width, target_channels, z_channels, depth, grad_checkpointing)

    def forward(self, target: torch.Tensor, z: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Mean over rows of the channel-mean squared velocity error. t ~ U(0, 1) raw draws (N,), noise (N, C)."""
        t = t * (1 - T_EPS) + T_EPS
        tb = t.to(target.dtype)[:, None]
        x_t = tb * noise + (1 - tb) * target
        v = self.net(x_t, t, z)
        return ((noise - target - v.float()) ** 2).mean(dim=-1).mean()
