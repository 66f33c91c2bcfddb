"""The flow head's whole Euler loop for one token (samplers.column_ar `flow` model function), built once per run.

It computes what `euler_flow(model.diffloss.net, ...)` computes, with the work that does not change inside the loop
taken out of it:
  - the time embeddings of all `num_steps` steps, once per run (t is the same for every token);
  - the condition projection `cond_embed(z)`, once per token (z is fixed while its token is integrated);
  - SiLU(y) of the adaLN input, once per step for all blocks (each block's `adaLN_modulation` starts with it), and
    the adaLN linears of all blocks and of the final layer as one matmul of the same rows;
  - module calls: the weights are gathered once (`prepare`) and the loop (`integrate`, a pure function of static
    shapes) calls torch.nn.functional directly. `sample.compile` compiles `integrate` whole
    (EquivariantAR.fused_flow): one graph per token, on CUDA one graph replay for all its Euler steps.

`batched=False` (exact) keeps every matmul at the shape the module path uses (rows x width per step), so results
are bit-identical to `euler_flow`: the CPU BLAS rounds a row differently depending on how many rows share the call.
`batched=True` also computes the adaLN modulations of all steps of a token in one matmul per block (they depend on
t and z only, not on x) and multiplies by weights transposed once per run: fewer, larger, faster calls, equal to the
exact loop up to float reassociation (~1e-6).
Guidance as released: z is (2B, Dz) = [conditional; unconditional], both halves see the same x and the velocity is
v_u + w (v_c - v_u) (samplers.guidance.combine, the formula `guided_velocity` uses).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models.eqar.flow_head import SimpleMLPAdaLN
from samplers.guidance import combine


def autocast_cast(device) -> callable:
    """t -> t in the autocast dtype when autocast is on for `device` (else t): a linear's weights cast once per run.
    Autocast would cast them at every call (its cache keeps only the casts of leaf tensors that require grad, and
    the regrouped/transposed copies here are neither); the values are the same, so results do not move."""
    kind = torch.device(device).type
    if not torch.is_autocast_enabled(kind):
        return lambda t: t
    dtype = torch.get_autocast_dtype(kind)
    return lambda t: t.to(dtype)


def prepare(head: SimpleMLPAdaLN, rows: int, num_steps: int, guided: bool, device, batched: bool = False) -> tuple:
    """Everything `integrate` reads that does not depend on the token: weights, regrouped, and the time embeddings."""
    r = 2 * rows if guided else rows
    lp = autocast_cast(device)
    # same shape and values as guided_velocity's t (one float per row): same embedding as the module path
    time = tuple(head.time_embed(torch.full((r,), k / num_steps, device=device, dtype=torch.float32))
                 for k in range(num_steps, 0, -1))
    if batched:
        time = torch.stack(time)
    w = head.input_proj.out_features
    # batched: the loop's weights also transposed once per run, (in, out) contiguous: torch.addmm on a few rows reads
    # them faster than linear's (out, in) (20-35% per matmul on the CPU here), rounding not bit for bit the same
    mat = (lambda t: lp(t).t().contiguous()) if batched else lp
    blocks = tuple((b.in_ln.weight, b.in_ln.bias, b.in_ln.eps, mat(b.mlp[0].weight), lp(b.mlp[0].bias),
                    mat(b.mlp[2].weight), lp(b.mlp[2].bias)) for b in head.res_blocks)
    fl = head.final_layer
    # every adaLN_modulation linear (blocks, then the final layer) as one matmul, its output rows regrouped as
    # [all scales | all shifts | all gates] so that 1 + scale is one op: each output column is the dot product
    # it was in its own layer (same inputs, same reduction), only more columns share the call
    mats = [b.adaLN_modulation[1] for b in head.res_blocks] + [fl.adaLN_modulation[1]]
    groups = {"shift": [], "scale": [], "gate": []}
    for i, lin in enumerate(mats):
        names = ("shift", "scale", "gate") if i < len(blocks) else ("shift", "scale")
        for j, name in enumerate(names):
            groups[name].append((lin.weight[j * w:(j + 1) * w], lin.bias[j * w:(j + 1) * w]))
    order = groups["scale"] + groups["shift"] + groups["gate"]
    ada = (lp(torch.cat([m for m, _ in order])), lp(torch.cat([b for _, b in order])))
    return (int(rows), bool(guided), bool(batched), w, time, (lp(head.cond_embed.weight), lp(head.cond_embed.bias)),
            (mat(head.input_proj.weight), lp(head.input_proj.bias)), blocks, ada,
            (fl.norm_final.eps, mat(fl.linear.weight), lp(fl.linear.bias)))


def _split(mod: torch.Tensor, w: int, d: int):
    """Per block (shift, 1 + scale, gate) and final (shift, 1 + scale) from one modulation row block."""
    m = d + 1
    onep = (1 + mod[..., :m * w]).split(w, dim=-1)
    shift = mod[..., m * w:2 * m * w].split(w, dim=-1)
    gate = mod[..., 2 * m * w:].split(w, dim=-1)
    return [(shift[i], onep[i], gate[i]) for i in range(d)], (shift[d], onep[d])


def _addmm(x: torch.Tensor, wt: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.addmm(b, x, wt)


def integrate(prep: tuple, z: torch.Tensor, noise: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The token (B, C) at t = 0 from x = noise (B, C) at t = 1, for condition z ((2B, Dz) guided, else (B, Dz))."""
    b, guided, batched, w, time, cond, inp, blocks, ada, (eps_f, fw, fb) = prep
    n, d = len(time), len(blocks)
    lin = _addmm if batched else F.linear
    ce = F.linear(z, *cond)
    if batched:  # (n, r, *): the modulations of all steps, one matmul
        all_blocks, all_final = _split(F.linear(F.silu(time + ce), *ada), w, d)
    x = noise
    for k in range(n):
        if batched:
            mods = [tuple(t[k] for t in blk) for blk in all_blocks]
            fshift, fscale = (t[k] for t in all_final)
        else:
            mods, (fshift, fscale) = _split(F.linear(F.silu(time[k] + ce), *ada), w, d)
        h = lin(torch.cat([x, x]) if guided else x, *inp)
        for (lw, lb, eps, w1, b1, w2, b2), (shift, onep, gate) in zip(blocks, mods):
            u = F.layer_norm(h, (w,), lw, lb, eps) * onep + shift
            h = h + gate * lin(F.silu(lin(u, w1, b1)), w2, b2)
        v = lin(F.layer_norm(h, (w,), None, None, eps_f) * fscale + fshift, fw, fb).float()
        if guided:
            v = combine(v[:b], v[b:], scale)
        x = x - v / n
    return x


class HeadEuler:
    """flow(z, noise, scale) -> token: integrate dx/dt = v(x, t, z) from t = 1 (x = noise (B, C)) to 0.

    `loop` is the integrating function (`integrate`, or the model's switchable EquivariantAR.fused_flow)."""

    def __init__(self, head: SimpleMLPAdaLN, rows: int, num_steps: int, guided: bool, device,
                 batched: bool = False, loop=integrate):
        self.loop = loop
        self.prep = prepare(head, rows, num_steps, guided, device, batched)

    def __call__(self, z: torch.Tensor, noise: torch.Tensor, scale: float | None = None) -> torch.Tensor:
        guided = self.prep[1]
        if (scale is not None) != guided:
            raise ValueError("HeadEuler was built for " + ("guided" if guided else "unguided") + " sampling")
        return self.loop(self.prep, z, noise, scale)


__all__ = ["HeadEuler", "prepare", "integrate", "autocast_cast"]
