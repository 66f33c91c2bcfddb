"""Left-to-right sampling of the equivariant column AR (models/eqar.py), one column token per iteration.

Per token i = 0..N-1:
  1. the transformer gives the token's condition z_i (the state of token i-1; the last buffer token for i = 0);
  2. the flow head integrates dx/dt = v(x, t, z_i) from t = 1 (x = noise) to 0 with `num_steps` Euler steps at
     t = k/num_steps, k = num_steps..1 (x <- x - v/num_steps);
  3. with guidance (cfg != 1) the velocity is v_u + w_i (v_c - v_u) (`guided_velocity`, the one function
     every step calls): the conditional and the unconditional (fake_latent) rows run in one batched call
     on the same x; w_i = 1 + (cfg - 1)(i + 1)/N for the 'linear'
     schedule (official default), cfg for 'constant'. Both halves then carry the same sampled token.
`temperature` is accepted for command-line parity but, as in the release, does not change anything: the ODE is
deterministic given its initial noise.

KV cache: the band mask lets token i see only tokens i - cond_length..i in every layer, so the cache keeps, per
layer, the rotated keys/values of the last `cond_length` tokens, plus the buffer's cross-attention keys/values
(the buffer never attends to image tokens, so its track through the blocks is computed once). `use_cache=False`
recomputes the whole zero-padded sequence every step as the release does (O(N^2) work, same result).

Randomness: row r draws exactly one N(0, I) vector of C values per token from generators[r] (CPU), so row r
depends only on its generator, its label and the model. With an `OfficialColumnStream` (sample.rng: official) the
noise comes instead from one stream in the release's order: per batch and per token one `randn(batch, C)` on the
CPU generator (the release draws on the CPU, then moves to the GPU), both guidance halves sharing it. Positions continue past the trained length (RoPE has no
table), so any number of tokens works (ultra-long images: 16 pixels of width per token).
Returns latents (B, N, C) in the generator's normalised space: the tokenizer decodes `latents / vae_norm`.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

import torch
from torch import nn

from core.seeding import check_generators

SCHEDULES = ("linear", "constant")


@dataclass(frozen=True)
class ColumnARSettings:
    num_steps: int = 100          # Euler steps of the flow head per token (official num_sampling_steps "100")
    cfg: float = 1.0              # guidance scale w; 1.0 = no unconditional rows
    cfg_schedule: str = "linear"  # 'linear' (official default) or 'constant'
    temperature: float = 1.0      # accepted, unused (as released)
    use_cache: bool = True

    def check(self) -> None:
        if self.num_steps < 1:
            raise ValueError(f"num_steps must be >= 1, got {self.num_steps}")
        if self.cfg_schedule not in SCHEDULES:
            raise ValueError(f"cfg_schedule must be one of {SCHEDULES}, got {self.cfg_schedule!r}")


def cfg_scale_at(step: int, num_tokens: int, cfg: float, schedule: str = "linear") -> float:
    if schedule == "linear":
        return 1.0 + (cfg - 1.0) * (step + 1) / num_tokens
    if schedule == "constant":
        return float(cfg)
    raise ValueError(f"cfg_schedule must be one of {SCHEDULES}, got {schedule!r}")


def guided_velocity(velocity: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor,
                    t, z: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """The flow head's velocity that every Euler step uses, at any t: Float32 (B, C) for x (B, C) at time t (a float
    or (B,); 1 = noise), `velocity` the head (model.diffloss.net) and z (B, Dz) the transformer's condition per row.

    Guidance as released (`forward_with_cfg`): with `scale` w, z is (2B, Dz) = [conditional; unconditional (the
    fake_latent buffer's)] and the result is v_u + w·(v_c − v_u), both halves evaluated on the same x in ONE call
    (w = 1 gives v_c; the sampler's w is the per-token cfg schedule). scale None: v(x, t, z), one call."""
    b = x.shape[0]
    if not torch.is_tensor(t) or t.dim() == 0:
        t = torch.full((b,), float(t), device=x.device, dtype=torch.float32)
    if scale is None:
        return velocity(x, t, z).float()
    v = velocity(torch.cat([x, x]), torch.cat([t, t]), z).float()
    return v[b:] + scale * (v[:b] - v[b:])


def euler_flow(velocity: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], z: torch.Tensor,
               noise: torch.Tensor, num_steps: int, scale: float | None = None) -> torch.Tensor:
    """Integrate from t = 1 to 0. noise (B, C); z (B, Dz), or (2B, Dz) = [conditional; unconditional] when `scale`
    is given; every step moves x by guided_velocity (v_u + scale (v_c - v_u) when guided)."""
    x = noise
    for k in range(num_steps, 0, -1):
        x = x - guided_velocity(velocity, x, k / num_steps, z, scale) / num_steps
    return x


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _normal_rows(generators: Sequence[torch.Generator], channels: int, device) -> torch.Tensor:
    return torch.stack([torch.randn(channels, generator=g, dtype=torch.float32) for g in generators]).to(device)


class OfficialColumnStream:
    """The random stream of the release's single-process eval loop (`eval_generator.py` + `evaluate`) after
    `torch.manual_seed(seed)`, without touching global state.

    The release draws nothing but the flow head's initial noise while sampling: per batch, per token, one
    `torch.randn(eval_bsz, C)` on the CPU default generator (guidance: the same rows for both halves); the RoPE shift
    and the label drop are training-only, and `temperature` is ignored. Labels are not random: image i of
    `num_images` gets class i // (num_images / class_num), and every batch is a full `eval_bsz` (the rows past
    num_images get class 0). So a batch shorter than `batch_size` still draws `batch_size` rows per token (the
    release's last batch), and the stream carries on from call to call: calls must come in the release's batch order.
    """

    def __init__(self, seed: int, batch_size: int, num_images: int | None = None, class_num: int | None = None):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if num_images is not None and class_num is not None and num_images % class_num:
            raise ValueError(f"the release's eval needs num_images ({num_images}) divisible by class_num "
                             f"({class_num})")
        self.seed, self.batch_size = int(seed), int(batch_size)
        self.num_images, self.class_num = num_images, class_num
        self.generator = torch.Generator().manual_seed(self.seed)
        self.rows_done = 0  # images handed out so far (labels of the next batch follow from it)

    def __repr__(self) -> str:
        return f"OfficialColumnStream(seed={self.seed}, batch_size={self.batch_size})"

    def labels(self, rows: int, device="cpu") -> torch.Tensor:
        """Long[rows] release labels of the next `rows` images (call once per batch, before `sample`)."""
        if self.num_images is None or self.class_num is None:
            raise ValueError("OfficialColumnStream needs num_images and class_num to give the release's labels")
        per = self.num_images // self.class_num
        idx = torch.arange(self.rows_done, self.rows_done + rows)
        return torch.where(idx < self.num_images, idx // per, 0).to(device)

    def noise(self, rows: int, channels: int, device) -> torch.Tensor:
        n = max(rows, self.batch_size)
        return torch.randn(n, channels, generator=self.generator)[:rows].to(device)


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


@torch.no_grad()
def sample(model: nn.Module, labels: torch.Tensor, generators: Sequence[torch.Generator] | None,
           settings: ColumnARSettings | None = None, num_tokens: int = 16, stream: OfficialColumnStream | None = None,
           **overrides) -> torch.Tensor:
    """Latents (B, num_tokens, C) for `labels` Long[B] (on the model's device); `overrides` replace fields of
    `settings` (e.g. cfg=7.0, num_steps=100). With `stream` the noise comes from it (generators are ignored)."""
    settings = replace(settings or ColumnARSettings(), **overrides)
    settings.check()
    net = _unwrap(model)
    if labels.dim() != 1:
        raise ValueError(f"labels must be Long[B], got shape {list(labels.shape)}")
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    b, device, c = labels.shape[0], labels.device, net.token_embed_dim
    if stream is None:
        check_generators(generators, b)
    elif b > stream.batch_size:
        raise ValueError(f"batch of {b} rows exceeds the official stream's batch size {stream.batch_size}")
    guided = settings.cfg != 1.0
    if guided:
        rows = torch.cat([labels, labels])
        drop = torch.cat([torch.zeros(b, dtype=torch.bool, device=device), torch.ones(b, dtype=torch.bool, device=device)])
    else:
        rows, drop = labels, None
    buffer = net.buffer(rows, drop)
    out = torch.zeros(b, num_tokens, c, device=device)
    if settings.use_cache:
        stepper = _CachedStepper(net, buffer)
        z = stepper.z
    else:
        seq = torch.zeros(rows.shape[0], num_tokens, c, device=device, dtype=buffer.dtype)
    for i in range(num_tokens):
        if not settings.use_cache:
            z = net.features(seq, buffer)[:, i]
        scale = cfg_scale_at(i, num_tokens, settings.cfg, settings.cfg_schedule) if guided else None
        noise = _normal_rows(generators, c, device) if stream is None else stream.noise(b, c, device)
        token = euler_flow(net.diffloss.net, z, noise, settings.num_steps, scale)
        out[:, i] = token
        token_rows = torch.cat([token, token]) if guided else token
        if settings.use_cache:
            if i + 1 < num_tokens:
                z = stepper.push(token_rows.to(buffer.dtype), i)
        else:
            seq[:, i] = token_rows.to(seq.dtype)
    if stream is not None:
        stream.rows_done += b
    return out


__all__ = ["ColumnARSettings", "OfficialColumnStream", "sample", "euler_flow", "guided_velocity", "cfg_scale_at",
           "SCHEDULES"]
