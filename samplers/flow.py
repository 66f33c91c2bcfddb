"""Flow-matching samplers of NiT (Euler / Heun ODE, Euler–Maruyama SDE) as functions of a velocity function.

Velocity-function protocol: `velocity(x Float64[N, C, p, p], t: float, guided: bool) -> Float64[N, C, p, p]`, the
velocity dx/dt of x_t = (1 − t)·x0 + t·ε at time t (1 = pure noise, 0 = data) of a packed state of N tokens.
`guided` says whether t lies inside the guidance interval: the sampler decides it (guidance_low <= t <= guidance_high;
Heun's corrector reuses the decision of its step's t_cur), the velocity function decides what it means (a NiT model
with guidance: models/nit/sampling.py, u + w·(c − u) in one doubled call). Nothing here knows a model, its labels,
its classes or its dtype.

Grids (exactly the official ones):
  ODE: linspace(1, 0, steps + 1); Euler x += (t_next − t_cur)·v; Heun corrects every step but the last.
  SDE: linspace(1, 0.04, steps) then 0. Each of the first steps − 1 intervals: ε drawn before the velocity call,
       w = 2·t_cur, score s = −(x + (1 − t)·v)/t, drift d = v − ½·w·s, x += d·dt + sqrt(w)·sqrt(|dt|)·ε (dt < 0).
       Last interval 0.04 → 0: x += (0 − 0.04)·d, no noise.
  Velocity calls: ODE steps (+ steps − 1 with Heun), SDE steps. State is float64.

Randomness (`packed_noise`, `sample_nit`): image i draws its initial noise and every SDE step noise from
generators[i] only (float32 normals on the CPU, then moved), so image i depends on (its generator, its label, its
size) and not on the batch it shares or the number of processes. Both may instead be given explicitly (`noise`,
`step_noise`), e.g. to replay a trajectory or the official script's random stream (samplers.official_stream_nit).

Editing (`known`, a `KnownRegion`: inpainting, outpainting): before every velocity call (Heun's corrector included)
the kept part of the state is replaced by the kept latents x0 noised to that call's t with the training interpolant,
(1 − t)·x0 + t·ξ, and the result holds x0 exactly there. ξ draws nothing new, so the free part sees the very random
numbers of plain sampling (nothing kept = sampling, bit for bit) and a row stays a function of its generator: ξ is
the initial noise at the kept positions (ODE: at every step, the straight path from that noise to x0), and for the
SDE from step i >= 1 on, step i − 1's noise ε_{i−1} at those positions, which the free part never reads (the kept
part of the state it moved is replaced before it is read).
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import torch

VelocityFn = Callable[[torch.Tensor, float, bool], torch.Tensor]
SDE_T_LAST = 0.04
MODES = ("ode", "sde")


def ode_grid(steps: int) -> torch.Tensor:
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def sde_grid(steps: int) -> torch.Tensor:
    return torch.cat([torch.linspace(1.0, SDE_T_LAST, steps, dtype=torch.float64),
                      torch.zeros(1, dtype=torch.float64)])


def _lengths(hw_list) -> list[int]:
    return [int(h) * int(w) for h, w in torch.as_tensor(hw_list).tolist()]


def in_interval(t: float, guidance_low: float = 0.0, guidance_high: float = 1.0) -> bool:
    """Whether the velocity at time t is the guided one: t inside [guidance_low, guidance_high]."""
    return float(guidance_low) <= float(t) <= float(guidance_high)


class KnownRegion:
    """The kept part of a packed state for editing (module doc): x0 Float (N, C, p, p) the kept latents (any value
    where not kept), mask Bool (N, 1, p, p) or (N, C, p, p) True where kept, noise the packed initial noise."""

    def __init__(self, x0: torch.Tensor, mask: torch.Tensor, noise: torch.Tensor):
        if mask.dim() != 4 or mask.shape[0] != x0.shape[0] or tuple(mask.shape[2:]) != tuple(x0.shape[2:]):
            raise ValueError(f"the kept mask has shape {list(mask.shape)}, the kept latents {list(x0.shape)}")
        self.x0 = x0.to(device=noise.device, dtype=torch.float64)
        self.mask = mask.to(device=noise.device, dtype=torch.bool)
        self.xi = noise.to(torch.float64)

    def at(self, x: torch.Tensor, t: float) -> torch.Tensor:
        """x with the kept part replaced by (1 − t)·x0 + t·ξ."""
        return torch.where(self.mask, (1 - t) * self.x0 + t * self.xi, x)

    def renoise(self, eps: torch.Tensor) -> None:
        """The SDE's step noise becomes ξ of the next step."""
        self.xi = eps.to(device=self.x0.device, dtype=torch.float64)

    def final(self, x: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask, self.x0, x)


def _keep(known: KnownRegion | None, x: torch.Tensor, t: float) -> torch.Tensor:
    return x if known is None else known.at(x, t)


def sample_ode(velocity: VelocityFn, noise: torch.Tensor, steps: int = 50, heun: bool = False,
               guidance_low: float = 0.0, guidance_high: float = 1.0,
               known: KnownRegion | None = None) -> torch.Tensor:
    """Packed noise (N, C, p, p) at t = 1 -> Float64 (N, C, p, p) at t = 0; `known`: editing (module doc)."""
    if int(steps) < 1:
        raise ValueError(f"need steps >= 1, got {steps}")
    grid = ode_grid(steps).tolist()
    x = noise.to(torch.float64)
    for i, (t_cur, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        guided = in_interval(t_cur, guidance_low, guidance_high)
        x = _keep(known, x, t_cur)
        d_cur = velocity(x, t_cur, guided)
        x_next = x + (t_next - t_cur) * d_cur
        if heun and i < steps - 1:
            d_prime = velocity(_keep(known, x_next, t_next), t_next, guided)
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
        x = x_next
    return x if known is None else known.final(x)


def packed_noise(generators: Sequence[torch.Generator], hw_list, channels: int, patch_size: int = 1,
                 device=None) -> torch.Tensor:
    """Float32 (N, C, p, p): image i's tokens drawn from generators[i] alone; hw_list one (h, w) per image."""
    lengths = _lengths(hw_list)
    if len(generators) != len(lengths):
        raise ValueError(f"need one generator per image: {len(generators)} generators for {len(lengths)} images")
    p = int(patch_size)
    parts = [torch.randn((n, channels, p, p), generator=g, dtype=torch.float32) for g, n in zip(generators, lengths)]
    return torch.cat(parts).to(device if device is not None else "cpu")


StepNoise = Union[Sequence[torch.Tensor], Callable[[int, torch.Tensor], torch.Tensor]]


def sample_sde(velocity: VelocityFn, noise: torch.Tensor, steps: int, step_noise: StepNoise,
               guidance_low: float = 0.0, guidance_high: float = 1.0,
               known: KnownRegion | None = None) -> torch.Tensor:
    """Euler–Maruyama from packed noise at t = 1 to Float64 samples at t = 0. Needs steps >= 2 (the grid ends with
    the deterministic 0.04 -> 0 step), so there are steps − 1 step noises ε_0 .. ε_{steps−2}, each (N, C, p, p):
    `step_noise` a sequence of steps − 1 tensors, or a function (i, x) -> ε_i called at step i before its velocity
    call, x the float64 state. `known`: editing (module doc)."""
    if int(steps) < 2:
        raise ValueError(f"the SDE sampler needs steps >= 2, got {steps}")
    if step_noise is None:
        raise ValueError("sample_sde needs the step noise: pass generators (one per image) or step_noise")
    if not callable(step_noise):
        given = list(step_noise)
        if len(given) != steps - 1:
            raise ValueError(f"step_noise holds {len(given)} tensors; {steps} SDE steps take {steps - 1}")
        for e in given:
            if tuple(e.shape) != tuple(noise.shape):
                raise ValueError(f"a step noise has shape {list(e.shape)}, the packed state {list(noise.shape)}")
        step_noise = lambda i, x: given[i]  # noqa: E731
    grid = sde_grid(steps).tolist()
    x = noise.to(torch.float64)

    def drift(x, t):
        v = velocity(x, t, in_interval(t, guidance_low, guidance_high))
        score = -(x + (1 - t) * v) / t
        return v - 0.5 * (2 * t) * score

    for i, (t_cur, t_next) in enumerate(zip(grid[:-2], grid[1:-1])):
        dt = t_next - t_cur
        eps = step_noise(i, x).to(device=x.device, dtype=torch.float64)
        x = _keep(known, x, t_cur)
        x = x + drift(x, t_cur) * dt + (2 * t_cur) ** 0.5 * abs(dt) ** 0.5 * eps
        if known is not None:
            known.renoise(eps)
    t_cur, t_next = grid[-2], grid[-1]
    x = _keep(known, x, t_cur)
    x = x + (t_next - t_cur) * drift(x, t_cur)
    return x if known is None else known.final(x)


def latent_size(height: int, width: int, downsample: int = 32, patch_size: int = 1) -> tuple[int, int]:
    """Image (H, W) -> token grid (h, w); sizes must be multiples of downsample·patch_size."""
    m = downsample * patch_size
    if height % m or width % m:
        raise ValueError(f"image size {height}x{width} must be a multiple of {m} (DC-AE f{downsample}, patch "
                         f"{patch_size})")
    return height // m, width // m


def sample_nit(velocity: VelocityFn, generators: Sequence[torch.Generator] | None, *, grids, channels: int,
               patch_size: int = 1, mode: str = "ode", steps: int = 50, guidance_low: float = 0.0,
               guidance_high: float = 1.0, heun: bool = False, device=None, noise: torch.Tensor | None = None,
               step_noise: StepNoise | None = None, noise_dtype: torch.dtype | None = None,
               known: Sequence[torch.Tensor] | None = None,
               keep: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Images of latent token grids `grids` (one (h, w) per row, packed into ONE sequence per velocity call) ->
    a list of per-row latents Float32 (C, h·p, w·p). `velocity` is the packed model function of those rows.
    Explicit randomness: `noise` the packed initial noise (N, C, p, p), `step_noise` the SDE's (sample_sde); what
    is given is not drawn from `generators` (None when both are given). `noise_dtype` rounds a drawn initial noise
    (the official script draws in the model dtype).
    Editing: `known` one latent (C, h·p, w·p) per row and `keep` one Bool (h·p, w·p) per row (True = kept exactly,
    the rest sampled; module doc); both or neither."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    grids = [(int(h), int(w)) for h, w in grids]
    p = int(patch_size)
    if noise is None:
        if generators is None:
            raise ValueError("sample_nit needs the initial noise: pass generators (one per image) or noise")
        noise = packed_noise(generators, grids, channels, p, device=device)
        if noise_dtype is not None:
            noise = noise.to(noise_dtype)
    elif tuple(noise.shape) != (sum(_lengths(grids)), channels, p, p):
        raise ValueError(f"noise has shape {list(noise.shape)}; the pack needs "
                         f"{[sum(_lengths(grids)), channels, p, p]}")
    interval = dict(guidance_low=guidance_low, guidance_high=guidance_high)
    if (known is None) != (keep is None):
        raise ValueError("editing needs both the known latents and the keep mask")
    if known is not None:
        interval["known"] = KnownRegion(pack_rows(known, grids, channels, p),
                                        pack_rows([k[None] for k in keep], grids, 1, p), noise)
    if mode == "ode":
        out = sample_ode(velocity, noise, steps, heun=heun, **interval)
    else:
        if step_noise is None and generators is not None:
            step_noise = lambda i, x: packed_noise(generators, grids, channels, p, device=x.device)  # noqa: E731
        out = sample_sde(velocity, noise, steps, step_noise, **interval)
    out = out.to(torch.float32)
    rows, start = [], 0
    for h, w in grids:
        seg = out[start:start + h * w].reshape(h, w, channels, p, p)
        rows.append(seg.permute(2, 0, 3, 1, 4).reshape(channels, h * p, w * p))
        start += h * w
    return rows


def pack_rows(rows: Sequence[torch.Tensor], grids, channels: int, patch_size: int = 1) -> torch.Tensor:
    """Per-row latents (channels, h·p, w·p) -> the packed (N, channels, p, p) of `sample_nit` (the inverse of its
    unpacking: tokens row-major, one p x p patch each)."""
    if len(rows) != len(grids):
        raise ValueError(f"need one latent per row: {len(rows)} for {len(grids)} rows")
    p, out = int(patch_size), []
    for r, (x, (h, w)) in enumerate(zip(rows, grids)):
        if tuple(x.shape) != (channels, h * p, w * p):
            raise ValueError(f"row {r}: latent of shape {list(x.shape)}, its grid needs {[channels, h * p, w * p]}")
        out.append(x.reshape(channels, h, p, w, p).permute(1, 3, 0, 2, 4).reshape(h * w, channels, p, p))
    return torch.cat(out)


# the README's settings for NiT-XL-1000K, by image (height, width); the paper's "432" rows were generated at 416
README_SETTINGS = {
    (256, 256): {"mode": "sde", "steps": 250, "cfg_scale": 2.25, "guidance_high": 0.7},
    (512, 512): {"mode": "sde", "steps": 250, "cfg_scale": 2.05, "guidance_high": 0.7},
    (768, 768): {"mode": "ode", "steps": 50, "cfg_scale": 3.0, "guidance_high": 0.7},
    (1024, 1024): {"mode": "ode", "steps": 50, "cfg_scale": 3.0, "guidance_high": 0.8},
    (1536, 1536): {"mode": "ode", "steps": 50, "cfg_scale": 3.5, "guidance_high": 0.9},
    (2048, 2048): {"mode": "ode", "steps": 50, "cfg_scale": 4.5, "guidance_high": 0.9},
    (320, 960): {"mode": "ode", "steps": 50, "cfg_scale": 4.0, "guidance_high": 0.9},
    (416, 768): {"mode": "ode", "steps": 50, "cfg_scale": 2.75, "guidance_high": 0.7},
    (480, 640): {"mode": "ode", "steps": 50, "cfg_scale": 2.75, "guidance_high": 0.7},
    (640, 480): {"mode": "ode", "steps": 50, "cfg_scale": 2.5, "guidance_high": 0.7},
    (768, 416): {"mode": "ode", "steps": 50, "cfg_scale": 2.85, "guidance_high": 0.7},
    (960, 320): {"mode": "ode", "steps": 50, "cfg_scale": 4.5, "guidance_high": 0.9},
}
