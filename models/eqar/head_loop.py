"""The flow head's whole Euler loop for one token (samplers.column_ar `flow` model function), built once per run.

It computes what `euler_flow(model.diffloss.net, ...)` computes, with the work that does not change inside the loop
taken out of it:
  - the time embeddings of all `num_steps` steps, once per run (t is the same for every token);
  - the condition projection `cond_embed(z)`, once per token (z is fixed while its token is integrated);
  - SiLU(y) of the adaLN input, once per step for all blocks (each block's `adaLN_modulation` starts with it);
  - module calls: the weights are read once and the loop calls torch.nn.functional directly.

`batched=False` (exact) keeps every matmul at the shape the module path uses (rows x width per step), so results
are bit-identical to `euler_flow`: the CPU BLAS rounds a row differently depending on how many rows share the call.
`batched=True` also computes the adaLN modulations of all steps of a token in one matmul per block (they depend on
t and z only, not on x): fewer, larger calls, equal to the exact loop up to float reassociation (~1e-6).
Guidance as released: z is (2B, Dz) = [conditional; unconditional], both halves see the same x and the velocity is
v_u + w (v_c - v_u) (samplers.guidance.combine, the formula `guided_velocity` uses).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.eqar.flow_head import SimpleMLPAdaLN
from samplers.guidance import combine


class HeadEuler:
    """flow(z, noise, scale) -> token: integrate dx/dt = v(x, t, z) from t = 1 (x = noise (B, C)) to 0."""

    def __init__(self, head: SimpleMLPAdaLN, rows: int, num_steps: int, guided: bool, device,
                 batched: bool = False):
        self.num_steps, self.rows, self.guided, self.batched = int(num_steps), int(rows), bool(guided), bool(batched)
        r = 2 * self.rows if self.guided else self.rows
        # same shape and values as guided_velocity's t (one float per row): same embedding as the module path
        self.time = [head.time_embed(torch.full((r,), k / self.num_steps, device=device, dtype=torch.float32))
                     for k in range(self.num_steps, 0, -1)]
        if self.batched:
            self.time_all = torch.stack(self.time)
        self.width = head.input_proj.out_features
        self.cond = (head.cond_embed.weight, head.cond_embed.bias)
        self.inp = (head.input_proj.weight, head.input_proj.bias)
        self.blocks = [(b.in_ln.weight, b.in_ln.bias, b.in_ln.eps, b.mlp[0].weight, b.mlp[0].bias, b.mlp[2].weight,
                        b.mlp[2].bias, b.adaLN_modulation[1].weight, b.adaLN_modulation[1].bias)
                       for b in head.res_blocks]
        fl = head.final_layer
        self.final = (fl.norm_final.eps, fl.adaLN_modulation[1].weight, fl.adaLN_modulation[1].bias,
                      fl.linear.weight, fl.linear.bias)

    # -- modulations: per block (shift, 1 + scale, gate), final (shift, 1 + scale), one tuple per step
    def _modulations_exact(self, y: torch.Tensor):
        s = F.silu(y)
        mods = []
        for *_, aw, ab in self.blocks:
            shift, scale, gate = F.linear(s, aw, ab).chunk(3, dim=-1)
            mods.append((shift, 1 + scale, gate))
        shift, scale = F.linear(s, self.final[1], self.final[2]).chunk(2, dim=-1)
        return mods, (shift, 1 + scale)

    def _modulations_batched(self, ce: torch.Tensor):
        n, r, w = self.time_all.shape
        s = F.silu(self.time_all + ce).reshape(n * r, w)
        per_block = []
        for *_, aw, ab in self.blocks:
            shift, scale, gate = F.linear(s, aw, ab).reshape(n, r, 3, w).unbind(2)
            per_block.append(list(zip(shift.unbind(0), (1 + scale).unbind(0), gate.unbind(0))))
        shift, scale = F.linear(s, self.final[1], self.final[2]).reshape(n, r, 2, w).unbind(2)
        final = list(zip(shift.unbind(0), (1 + scale).unbind(0)))
        return [([pb[k] for pb in per_block], final[k]) for k in range(n)]

    def __call__(self, z: torch.Tensor, noise: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        if (scale is not None) != self.guided:
            raise ValueError("HeadEuler was built for " + ("guided" if self.guided else "unguided") + " sampling")
        n, b, w = self.num_steps, self.rows, self.width
        ce = F.linear(z, *self.cond)
        batched = self._modulations_batched(ce) if self.batched else None
        eps_f, fw, fb = self.final[0], self.final[3], self.final[4]
        x = noise
        for k in range(n):
            mods, (fshift, fscale) = batched[k] if batched is not None else self._modulations_exact(self.time[k] + ce)
            h = F.linear(torch.cat([x, x]) if self.guided else x, *self.inp)
            for (lw, lb, eps, w1, b1, w2, b2, _, _), (shift, onep, gate) in zip(self.blocks, mods):
                u = F.layer_norm(h, (w,), lw, lb, eps) * onep + shift
                h = h + gate * F.linear(F.silu(F.linear(u, w1, b1)), w2, b2)
            v = F.linear(F.layer_norm(h, (w,), None, None, eps_f) * fscale + fshift, fw, fb).float()
            if self.guided:
                v = combine(v[:b], v[b:], scale)
            x = x - v / n
        return x


__all__ = ["HeadEuler"]
