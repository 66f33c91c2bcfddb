"""The flow head's whole Euler loop for one token (samplers.column_ar `flow` model function), built once per run.

It computes what `euler_flow(model.diffloss.net, ...)` computes, with the work that does not change inside the loop
taken out of it:
  - the time embeddings of all `num_steps` steps, once per run (t is the same for every token);
  - the condition projection `cond_embed(z)`, once per token (z is fixed while its token is integrated);
  - SiLU(y) of the adaLN input, once per step for all blocks (each block's `adaLN_modulation` starts with it), and
    the adaLN linears of all blocks and of the final layer as one matmul of the same rows;
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
        self.width = w = head.input_proj.out_features
        self.cond = (head.cond_embed.weight, head.cond_embed.bias)
        self.inp = (head.input_proj.weight, head.input_proj.bias)
        self.blocks = [(b.in_ln.weight, b.in_ln.bias, b.in_ln.eps, b.mlp[0].weight, b.mlp[0].bias, b.mlp[2].weight,
                        b.mlp[2].bias) for b in head.res_blocks]
        fl = head.final_layer
        self.final = (fl.norm_final.eps, fl.linear.weight, fl.linear.bias)
        # every adaLN_modulation linear (blocks, then the final layer) as one matmul, its output rows regrouped as
        # [all scales | all shifts | all gates] so that 1 + scale is one op: each output column is the dot product
        # it was in its own layer (same inputs, same reduction), only more columns share the call
        mats = [b.adaLN_modulation[1] for b in head.res_blocks] + [fl.adaLN_modulation[1]]
        groups = {"shift": [], "scale": [], "gate": []}
        for i, lin in enumerate(mats):
            names = ("shift", "scale", "gate") if i < len(self.blocks) else ("shift", "scale")
            for j, name in enumerate(names):
                groups[name].append((lin.weight[j * w:(j + 1) * w], lin.bias[j * w:(j + 1) * w]))
        order = groups["scale"] + groups["shift"] + groups["gate"]
        self.ada = (torch.cat([m for m, _ in order]), torch.cat([b for _, b in order]))
        self.n_mod = len(mats)

    def _split(self, mod: torch.Tensor):
        """Per block (shift, 1 + scale, gate) and final (shift, 1 + scale) from one modulation row block."""
        w, m, d = self.width, self.n_mod, len(self.blocks)
        onep = (1 + mod[..., :m * w]).split(w, dim=-1)
        shift = mod[..., m * w:2 * m * w].split(w, dim=-1)
        gate = mod[..., 2 * m * w:].split(w, dim=-1)
        return [(shift[i], onep[i], gate[i]) for i in range(d)], (shift[d], onep[d])

    def _modulations_exact(self, y: torch.Tensor):
        return self._split(F.linear(F.silu(y), *self.ada))

    def _modulations_batched(self, ce: torch.Tensor):
        n, r, w = self.time_all.shape
        mod = F.linear(F.silu(self.time_all + ce), *self.ada)  # (n, r, *): all steps' modulations, one matmul
        blocks, final = self._split(mod)
        blocks = [tuple(t.unbind(0) for t in blk) for blk in blocks]
        final = tuple(t.unbind(0) for t in final)
        return [([tuple(t[k] for t in blk) for blk in blocks], tuple(t[k] for t in final)) for k in range(n)]

    def __call__(self, z: torch.Tensor, noise: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        if (scale is not None) != self.guided:
            raise ValueError("HeadEuler was built for " + ("guided" if self.guided else "unguided") + " sampling")
        n, b, w = self.num_steps, self.rows, self.width
        ce = F.linear(z, *self.cond)
        batched = self._modulations_batched(ce) if self.batched else None
        eps_f, fw, fb = self.final
        x = noise
        for k in range(n):
            mods, (fshift, fscale) = batched[k] if batched is not None else self._modulations_exact(self.time[k] + ce)
            h = F.linear(torch.cat([x, x]) if self.guided else x, *self.inp)
            for (lw, lb, eps, w1, b1, w2, b2), (shift, onep, gate) in zip(self.blocks, mods):
                u = F.layer_norm(h, (w,), lw, lb, eps) * onep + shift
                h = h + gate * F.linear(F.silu(F.linear(u, w1, b1)), w2, b2)
            v = F.linear(F.layer_norm(h, (w,), None, None, eps_f) * fscale + fshift, fw, fb).float()
            if self.guided:
                v = combine(v[:b], v[b:], scale)
            x = x - v / n
        return x


__all__ = ["HeadEuler"]
