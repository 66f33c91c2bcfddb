"""NiT as the velocity function of the module-free flow samplers (samplers/flow.py), and the sampling entries that
read the module (patch size, latent channels, null label, classes, device, dtype).

`NiTVelocity` is the guided velocity of the official sampling script: when the sampler says t is inside the
guidance interval and w = settings.cfg_scale != 1, the pack is duplicated in ONE model call (x [x; x], labels
[y; null], hw_list [hw; hw], conditional first) and combined u + w·(c − u) (samplers.guidance.combine); otherwise
the conditional velocity alone, one call on the pack. The model gets x.to(model_dtype) and t as float64 (B,) and
the velocity comes back in float64. Settings: models.nit_family.NiTSampling, validated once by its sample_settings.
"""
from __future__ import annotations

import torch

from samplers.flow import latent_size, sample_nit
from samplers.guidance import combine


class NiTVelocity:
    """velocity(x, t, guided) of samplers.flow for `labels` Long[B] on the packed grids `hw_list` Int[B, 2];
    model_fn(x, t, y, hw_list) -> v is a NiT or any function of that signature; cfg_scale is w."""

    def __init__(self, model_fn, labels: torch.Tensor, hw_list: torch.Tensor, cfg_scale: float, null_label: int,
                 model_dtype: torch.dtype = torch.float32):
        self.model_fn, self.labels, self.hw_list = model_fn, labels, hw_list
        self.w, self.null_label, self.model_dtype = float(cfg_scale), int(null_label), model_dtype

    def __call__(self, x: torch.Tensor, t: float, guided: bool) -> torch.Tensor:
        b = self.labels.shape[0]
        xin = x.to(self.model_dtype)
        if not guided or self.w == 1.0:
            tt = torch.full((b,), float(t), dtype=torch.float64, device=x.device)
            return self.model_fn(xin, tt, self.labels, self.hw_list).to(torch.float64)
        tt = torch.full((2 * b,), float(t), dtype=torch.float64, device=x.device)
        null = torch.full_like(self.labels, self.null_label)
        out = self.model_fn(torch.cat([xin, xin]), tt, torch.cat([self.labels, null]),
                            torch.cat([self.hw_list, self.hw_list])).to(torch.float64)
        cond, uncond = out.chunk(2)
        return combine(cond, uncond, self.w)


def _net(model):
    return getattr(model, "module", model)


def _is_pair(size) -> bool:
    return len(size) == 2 and all(isinstance(v, int) for v in size)


@torch.no_grad()
def sample_latents(model, labels: torch.Tensor, generators, settings, size, noise: torch.Tensor | None = None,
                   step_noise=None, model_dtype: torch.dtype | None = None, known=None, keep=None):
    """Image size (H, W) in pixels -> scaled latents Float32 (B, C, H/downsample, W/downsample) of the model (a NiT,
    possibly DDP-wrapped); `size` a list of one (H, W) per row: one packed batch, a list of per-row latents back.
    `noise` / `step_noise`: explicit randomness (samplers.flow.sample_nit). The model gets the state in
    `model_dtype`, default the initial noise's dtype (float32 when drawn). `known` / `keep`: editing, one
    (C, H/downsample, W/downsample) latent and one Bool (H/downsample, W/downsample) per row (samplers.flow)."""
    net = _net(model)
    b, p = labels.shape[0], net.patch_size
    sizes = [tuple(size)] * b if _is_pair(size) else [tuple(s) for s in size]
    if len(sizes) != b:
        raise ValueError(f"need one size per row: {len(sizes)} sizes for {b} labels")
    grids = [latent_size(int(h), int(w), settings.downsample, p) for h, w in sizes]
    device = next(net.parameters()).device
    labels = labels.to(device)
    hw_list = torch.tensor(grids, dtype=torch.int32, device=device).reshape(b, 2)
    dtype = model_dtype or (noise.dtype if noise is not None else torch.float32)
    velocity = NiTVelocity(model, labels, hw_list, settings.cfg_scale, net.null_label, dtype)
    rows = sample_nit(velocity, generators, grids=grids, channels=net.in_channels, patch_size=p, mode=settings.mode,
                      steps=settings.steps, guidance_low=settings.guidance_low, guidance_high=settings.guidance_high,
                      heun=settings.heun, device=device, noise=noise, step_noise=step_noise, noise_dtype=model_dtype,
                      known=known, keep=keep)
    return torch.stack(rows) if _is_pair(size) else rows


@torch.no_grad()
def sample_official(model, rows: int, settings, size) -> tuple[torch.Tensor, torch.Tensor]:
    """(scaled latents Float32 (rows, C, H/downsample, W/downsample), labels Long[rows]) of the next batch of
    settings.stream (samplers.official_stream_nit.NiTOfficialStream) at image size `size` = (H, W): the full batch
    is sampled with the stream's labels and noise, the first `rows` kept."""
    net, stream = _net(model), settings.stream
    if rows > stream.batch_size:
        raise ValueError(f"a batch of {rows} rows exceeds the official stream's batch size {stream.batch_size}")
    if not _is_pair(size):
        raise ValueError(f"the official stream samples one image size per run, got {size!r}")
    p = net.patch_size
    h, w = latent_size(int(size[0]), int(size[1]), settings.downsample, p)
    param = next(net.parameters())
    labels, noise = stream.batch(net.in_channels, h, w, p, net.num_classes, param.device)
    # the state starts from the stream's bf16 draw; the model gets it in its own dtype (eval.precision: the compute)
    out = sample_latents(model, labels, None, settings, tuple(size), noise=noise,
                         step_noise=stream.step_noise if settings.mode == "sde" else None, model_dtype=param.dtype)
    return out[:rows], labels[:rows]
