"""Flow-matching samplers of NiT (Euler / Heun ODE, Euler–Maruyama SDE) as functions of a model function.

Model-function protocol: `model_fn(x Float[N, C, p, p], t Float[B], y Long[B], hw_list Int[B, 2]) -> v` (a NiT
model fits as is). t = 1 is pure noise, t = 0 data; v is the velocity dx/dt of x_t = (1 − t)·x0 + t·ε.

Guidance (`cfg_scale` = the official `--cfg-scale`, the weight w in u + w·(c − u); w = 1 is no guidance, 0 is the
unconditional model): `guided_velocity(model_fn, x, t, labels, hw_list, cfg_scale, guidance_low, guidance_high)` is
the velocity every sampler here steps, exposed so that it can be evaluated at any t. A guided evaluation runs the
pack twice in ONE call (the pack duplicated, labels [y; null], conditional first) and combines u + w·(c − u). It is
guided iff w != 1 and guidance_low <= t <= guidance_high; otherwise the conditional velocity alone (one evaluation
of the pack). Heun's corrector reuses the decision of t_cur.

State is float64; the model gets `x.to(model_dtype)` (default: the noise's dtype; the official script uses bf16)
and t as float64. Grids (exactly the official ones):
  ODE: linspace(1, 0, steps + 1); Euler x += (t_next − t_cur)·v; Heun corrects every step but the last.
  SDE: linspace(1, 0.04, steps) then 0. Each of the first steps − 1 intervals: ε drawn (per image, from its own
       generator) before the model call, w = 2·t_cur, score s = −(x + (1 − t)·v)/t, drift d = v − ½·w·s,
       x += d·dt + sqrt(w)·sqrt(|dt|)·ε (dt < 0). Last interval 0.04 → 0: x += (0 − 0.04)·d, no noise.
  Model calls: ODE steps (+ steps − 1 with Heun), SDE steps.

Randomness (`packed_noise`, `sample_nit`): image i draws its initial noise and every SDE step noise from
generators[i] only (float32 normals on the CPU, then moved), so image i depends on (its generator, its label, its
size) and not on the batch it shares or the number of processes. Both may instead be given explicitly (`noise`,
`step_noise`), e.g. to replay a trajectory or the official script's random stream (samplers.official_stream_nit).
"""
from __future__ import annotations

import numbers
from typing import Callable, Sequence, Union

import torch

ModelFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
SDE_T_LAST = 0.04
MODES = ("ode", "sde")


def ode_grid(steps: int) -> torch.Tensor:
    return torch.linspace(1.0, 0.0, steps + 1, dtype=torch.float64)


def sde_grid(steps: int) -> torch.Tensor:
    return torch.cat([torch.linspace(1.0, SDE_T_LAST, steps, dtype=torch.float64),
                      torch.zeros(1, dtype=torch.float64)])


def _check(steps: int, cfg_scale: float, low: float, high: float) -> None:
    if int(steps) < 1:
        raise ValueError(f"need steps >= 1, got {steps}")
    if not low <= high:
        raise ValueError(f"guidance interval must satisfy low <= high, got [{low}, {high}]")


def _lengths(hw_list: torch.Tensor) -> list[int]:
    return [int(h) * int(w) for h, w in torch.as_tensor(hw_list).tolist()]


def is_guided(t: float, cfg_scale: float, guidance_low: float = 0.0, guidance_high: float = 1.0) -> bool:
    """Whether the velocity at time t is guided: w != 1 and t inside [guidance_low, guidance_high]."""
    return float(cfg_scale) != 1.0 and float(guidance_low) <= float(t) <= float(guidance_high)


def guided_velocity(model_fn: ModelFn, x: torch.Tensor, t: float, labels: torch.Tensor, hw_list: torch.Tensor,
                    cfg_scale: float = 1.0, guidance_low: float = 0.0, guidance_high: float = 1.0,
                    null_label: int = 1000, model_dtype: torch.dtype | None = None,
                    decide_at: float | None = None) -> torch.Tensor:
    """The velocity the samplers step, at any t: packed x (N, C, p, p) at time t (1 = noise) -> Float64 (N, C, p, p).

    Convention of NiT's `--cfg-scale` w: u + w·(c − u), c = model(x, t, labels), u = model(x, t, null_label) (w = 1:
    c alone). Inside the guidance interval (guidance_low <= t <= guidance_high, decided at `decide_at`, default t;
    Heun's corrector passes its step's t_cur) the pack is doubled in ONE model call (labels [y; null], conditional
    first); outside it, or with w = 1, the conditional velocity alone (one call on the pack). The model gets
    x.to(model_dtype) (default float32) and t as float64."""
    b = labels.shape[0]
    xin = x.to(model_dtype or torch.float32)
    if not is_guided(t if decide_at is None else decide_at, cfg_scale, guidance_low, guidance_high):
        tt = torch.full((b,), float(t), dtype=torch.float64, device=x.device)
        return model_fn(xin, tt, labels, hw_list).to(torch.float64)
    tt = torch.full((2 * b,), float(t), dtype=torch.float64, device=x.device)
    out = model_fn(torch.cat([xin, xin]), tt, torch.cat([labels, torch.full_like(labels, int(null_label))]),
                   torch.cat([hw_list, hw_list])).to(torch.float64)
    cond, uncond = out.chunk(2)
    return uncond + float(cfg_scale) * (cond - uncond)


def sample_ode(model_fn: ModelFn, noise: torch.Tensor, labels: torch.Tensor, hw_list: torch.Tensor,
               steps: int = 50, cfg_scale: float = 1.0, guidance_low: float = 0.0, guidance_high: float = 1.0,
               heun: bool = False, null_label: int = 1000, model_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Packed noise (N, C, p, p) at t = 1 -> Float64 (N, C, p, p) at t = 0. cfg_scale: the official w (docstring)."""
    _check(steps, cfg_scale, guidance_low, guidance_high)
    kw = dict(cfg_scale=cfg_scale, guidance_low=guidance_low, guidance_high=guidance_high, null_label=null_label,
              model_dtype=model_dtype or noise.dtype)
    grid = ode_grid(steps).tolist()
    x = noise.to(torch.float64)
    for i, (t_cur, t_next) in enumerate(zip(grid[:-1], grid[1:])):
        d_cur = guided_velocity(model_fn, x, t_cur, labels, hw_list, **kw)
        x_next = x + (t_next - t_cur) * d_cur
        if heun and i < steps - 1:
            d_prime = guided_velocity(model_fn, x_next, t_next, labels, hw_list, decide_at=t_cur, **kw)
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime)
        x = x_next
    return x


def packed_noise(generators: Sequence[torch.Generator], hw_list: torch.Tensor, channels: int, patch_size: int = 1,
                 device=None) -> torch.Tensor:
    """Float32 (N, C, p, p): image i's tokens drawn from generators[i] alone."""
    lengths = _lengths(hw_list)
    if len(generators) != len(lengths):
        raise ValueError(f"need one generator per image: {len(generators)} generators for {len(lengths)} images")
    p = int(patch_size)
    parts = [torch.randn((n, channels, p, p), generator=g, dtype=torch.float32) for g, n in zip(generators, lengths)]
    return torch.cat(parts).to(device if device is not None else "cpu")


StepNoise = Union[Sequence[torch.Tensor], Callable[[int, torch.Tensor], torch.Tensor]]


def sample_sde(model_fn: ModelFn, noise: torch.Tensor, labels: torch.Tensor, hw_list: torch.Tensor,
               generators: Sequence[torch.Generator] | None = None, steps: int = 250, cfg_scale: float = 1.0,
               guidance_low: float = 0.0, guidance_high: float = 1.0, null_label: int = 1000,
               model_dtype: torch.dtype | None = None, step_noise: StepNoise | None = None) -> torch.Tensor:
    """Euler–Maruyama from packed noise at t = 1 to Float64 samples at t = 0. Needs steps >= 2 (the grid ends with
    the deterministic 0.04 -> 0 step), so there are steps − 1 step noises ε_0 .. ε_{steps−2}, each (N, C, p, p):
    explicit as `step_noise` (a sequence of steps − 1 tensors, or a function (i, x) -> ε_i called at step i before
    its model call, x the float64 state), else drawn per image from generators[i]."""
    _check(steps, cfg_scale, guidance_low, guidance_high)
    if steps < 2:
        raise ValueError(f"the SDE sampler needs steps >= 2, got {steps}")
    if step_noise is None and generators is None:
        raise ValueError("sample_sde needs the step noise: pass generators (one per image) or step_noise")
    if step_noise is not None and not callable(step_noise):
        given = list(step_noise)
        if len(given) != steps - 1:
            raise ValueError(f"step_noise holds {len(given)} tensors; {steps} SDE steps take {steps - 1}")
        for e in given:
            if tuple(e.shape) != tuple(noise.shape):
                raise ValueError(f"a step noise has shape {list(e.shape)}, the packed state {list(noise.shape)}")
        step_noise = lambda i, x: given[i]  # noqa: E731
    kw = dict(cfg_scale=cfg_scale, guidance_low=guidance_low, guidance_high=guidance_high, null_label=null_label,
              model_dtype=model_dtype or noise.dtype)
    channels, p = noise.shape[1], noise.shape[2]
    grid = sde_grid(steps).tolist()
    x = noise.to(torch.float64)

    def drift(x, t):
        v = guided_velocity(model_fn, x, t, labels, hw_list, **kw)
        score = -(x + (1 - t) * v) / t
        return v - 0.5 * (2 * t) * score

    for i, (t_cur, t_next) in enumerate(zip(grid[:-2], grid[1:-1])):
        dt = t_next - t_cur
        if step_noise is None:
            eps = packed_noise(generators, hw_list, channels, p, device=x.device)
        else:
            eps = step_noise(i, x)
        eps = eps.to(device=x.device, dtype=torch.float64)
        x = x + drift(x, t_cur) * dt + (2 * t_cur) ** 0.5 * abs(dt) ** 0.5 * eps
    t_cur, t_next = grid[-2], grid[-1]
    return x + (t_next - t_cur) * drift(x, t_cur)


def latent_size(height: int, width: int, downsample: int = 32, patch_size: int = 1) -> tuple[int, int]:
    """Image (H, W) -> token grid (h, w); sizes must be multiples of downsample·patch_size."""
    m = downsample * patch_size
    if height % m or width % m:
        raise ValueError(f"image size {height}x{width} must be a multiple of {m} (DC-AE f{downsample}, patch "
                         f"{patch_size})")
    return height // m, width // m


def _is_pair(size) -> bool:
    return len(size) == 2 and all(isinstance(v, numbers.Integral) for v in size)


def _grids(size, b: int) -> list[tuple[int, int]]:
    """One (h, w) per row: `size` is one (h, w) for all rows or a list of b of them."""
    if _is_pair(size):
        return [(int(size[0]), int(size[1]))] * b
    grids = [(int(h), int(w)) for h, w in size]
    if len(grids) != b:
        raise ValueError(f"need one size per row: {len(grids)} sizes for {b} labels")
    return grids


def sample_nit(model_fn: ModelFn, labels: torch.Tensor, generators: Sequence[torch.Generator] | None, *,
               size, channels: int = 32, patch_size: int = 1, mode: str = "ode", steps: int = 50,
               cfg_scale: float = 1.0, guidance_low: float = 0.0, guidance_high: float = 1.0, heun: bool = False,
               null_label: int = 1000, model_dtype: torch.dtype | None = None, device=None,
               noise: torch.Tensor | None = None, step_noise: StepNoise | None = None):
    """B images of latent token grid `size` = (h, w) -> latents Float32 (B, C, h·p, w·p) for the decoder
    (DC-AE latents are in the scaled space; divide by the scaling factor before decoding). `size` may also be a list
    of one (h, w) per row: rows of different sizes are packed into ONE sequence per model call (attention stays
    within an image, so each row is what it would be alone) and a list of per-row (C, h·p, w·p) comes back.
    Explicit randomness: `noise` the packed initial noise (N, C, p, p), `step_noise` the SDE's (sample_sde); what is
    given is not drawn from `generators` (None when both are given)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    b = labels.shape[0]
    grids = _grids(size, b)
    hw_list = torch.tensor(grids, dtype=torch.int32, device=device).reshape(b, 2)
    if noise is None:
        if generators is None:
            raise ValueError("sample_nit needs the initial noise: pass generators (one per image) or noise")
        noise = packed_noise(generators, hw_list, channels, patch_size, device=device)
        if model_dtype is not None:
            # the official script draws its noise in the model dtype: round the draw the same way
            noise = noise.to(model_dtype)
    elif tuple(noise.shape) != (sum(_lengths(hw_list)), channels, patch_size, patch_size):
        raise ValueError(f"noise has shape {list(noise.shape)}; the pack needs "
                         f"{[sum(_lengths(hw_list)), channels, patch_size, patch_size]}")
    kw = dict(cfg_scale=cfg_scale, guidance_low=guidance_low, guidance_high=guidance_high, null_label=null_label,
              model_dtype=model_dtype)
    if mode == "ode":
        out = sample_ode(model_fn, noise, labels, hw_list, steps, heun=heun, **kw)
    else:
        out = sample_sde(model_fn, noise, labels, hw_list, generators, steps, step_noise=step_noise, **kw)
    p = int(patch_size)
    out = out.to(torch.float32)
    if _is_pair(size):
        h, w = grids[0]
        out = out.reshape(b, h, w, channels, p, p)
        return out.permute(0, 3, 1, 4, 2, 5).reshape(b, channels, h * p, w * p)
    rows, start = [], 0
    for h, w in grids:
        seg = out[start:start + h * w].reshape(h, w, channels, p, p)
        rows.append(seg.permute(2, 0, 3, 1, 4).reshape(channels, h * p, w * p))
        start += h * w
    return rows


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
SETTING_KEYS = ("mode", "steps", "cfg_scale", "guidance_low", "guidance_high", "heun", "model_dtype")


@torch.no_grad()
def sample(model: torch.nn.Module, labels: torch.Tensor, generators: Sequence[torch.Generator] | None,
           settings: dict | None = None, size=(256, 256), downsample: int = 32, noise: torch.Tensor | None = None,
           step_noise: StepNoise | None = None):
    """Image size (H, W) in pixels -> scaled latents Float32 (B, C, H/downsample, W/downsample) of the model
    (a NiT, possibly DDP-wrapped), with `settings` (keys SETTING_KEYS, all but model_dtype required: the defaults
    live in configs/family/nit.yaml; cfg_scale in the official w convention). `size` may be a list of one (H, W)
    per row: one packed batch, a list of per-row latents back (sample_nit). `noise` / `step_noise`: explicit
    randomness (sample_nit)."""
    net = model.module if hasattr(model, "module") else model
    opts = dict(settings or {})
    unknown = sorted(set(opts) - set(SETTING_KEYS))
    if unknown:
        raise ValueError(f"unknown sampling settings {unknown}; known: {list(SETTING_KEYS)}")
    missing = [k for k in SETTING_KEYS if k not in opts and k != "model_dtype"]
    if missing:
        raise ValueError(f"missing sampling settings {missing}; sample() takes every one of {list(SETTING_KEYS)} "
                         f"but model_dtype")
    p = net.patch_size
    if _is_pair(size):
        grid = latent_size(int(size[0]), int(size[1]), downsample, p)
    else:
        grid = [latent_size(h, w, downsample, p) for h, w in _grids(size, labels.shape[0])]
    device = next(net.parameters()).device
    return sample_nit(model, labels.to(device), generators, size=grid, channels=net.in_channels, patch_size=p,
                      null_label=net.null_label, device=device, noise=noise, step_noise=step_noise, **opts)
