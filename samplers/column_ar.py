"""Left-to-right sampling of a column AR generator, one column token per iteration, as a function of two model
functions (the equivariant column AR of models/eqar/model.py provides them: models/eqar/condition.py).

Model functions:
  condition(i, token) -> z_i   the transformer's condition of token i, called for i = 0..N−1 in order, once each:
                               token is the token i − 1 just sampled (B, C), None for i = 0. With guidance (cfg != 1)
                               z is (2B, Dz) = [conditional; unconditional], the function feeding both halves the
                               same token; else (B, Dz).
  head(x, t, z) -> v           the flow head's velocity, x (B', C), t (B',), z (B', Dz).
Per token i = 0..N-1:
  1. z_i = condition(i, token_{i−1});
  2. the flow head integrates dx/dt = v(x, t, z_i) from t = 1 (x = noise) to 0 with `num_steps` Euler steps at
     t = k/num_steps, k = num_steps..1 (x <- x - v/num_steps);
  3. with guidance the velocity is v_u + w_i (v_c - v_u) (`guided_velocity`, the one function every step calls,
     samplers.guidance's formula): the conditional and the unconditional rows run in one batched call on the same
     x; w_i = 1 + (cfg - 1)(i + 1)/N for the 'linear' schedule (official default), cfg for 'constant'.
A model may hand in its own integrator `flow(z, noise, scale) -> token` of the same Euler steps (the equivariant AR's
fused head loop, models/eqar/head_loop.py); without it the sampler steps `head` through `euler_flow`.
`temperature` is accepted for command-line parity but, as in the release, does not change anything: the ODE is
deterministic given its initial noise.

Randomness: row r draws exactly one N(0, I) vector of C values per token from generators[r] (CPU), so row r
depends only on its generator, its label and the model. With an `OfficialColumnStream` (sample.rng: official) the
noise comes instead from one stream in the release's order: per batch and per token one `randn(batch, C)` on the
CPU generator (the release draws on the CPU, then moves to the GPU), both guidance halves sharing it. Positions
continue past the trained length (RoPE has no table), so any number of tokens works (ultra-long images: 16 pixels of
width per token). Returns latents (B, N, C) in the generator's normalised space: the tokenizer decodes
`latents / vae_norm`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from core.seeding import check_generators
from samplers.guidance import combine

SCHEDULES = ("linear", "constant")


@dataclass(frozen=True)
class ColumnARSettings:
    num_steps: int = 100          # Euler steps of the flow head per token (official num_sampling_steps "100")
    cfg: float = 1.0              # guidance weight w (u + w·(c − u), the official --cfg); 1.0 = no unconditional rows
    cfg_schedule: str = "linear"  # 'linear' (official default) or 'constant'
    temperature: float = 1.0      # accepted, unused (as released)
    use_cache: bool = True
    # the model's own fused per-token loops where it has them (the equivariant AR: models/eqar/head_loop.py and
    # kv_cache.py, bit-identical); False: the module path step by step (the reference the fast path is tested on)
    fast_path: bool = True
    # fast path only: the head's modulations of all Euler steps of a token in one matmul per block (faster; equal
    # to the module path up to float reassociation, not bit for bit)
    batched_head: bool = False

    def check(self) -> None:
        if self.batched_head and not self.fast_path:
            raise ValueError("batched_head (sample.batched_head) needs fast_path (sample.fast_path): it is a variant "
                             "of the fast path's head loop")
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
    return combine(v[:b], v[b:], scale)


def euler_flow(velocity: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor], z: torch.Tensor,
               noise: torch.Tensor, num_steps: int, scale: float | None = None) -> torch.Tensor:
    """Integrate from t = 1 to 0. noise (B, C); z (B, Dz), or (2B, Dz) = [conditional; unconditional] when `scale`
    is given; every step moves x by guided_velocity (v_u + scale (v_c - v_u) when guided)."""
    x = noise
    for k in range(num_steps, 0, -1):
        x = x - guided_velocity(velocity, x, k / num_steps, z, scale) / num_steps
    return x


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


ConditionFn = Callable[[int, "torch.Tensor | None"], torch.Tensor]
FlowFn = Callable[[torch.Tensor, torch.Tensor, "float | None"], torch.Tensor]


@torch.no_grad()
def sample(condition: ConditionFn, head: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
           generators: Sequence[torch.Generator] | None, settings: ColumnARSettings, *, rows: int, channels: int,
           num_tokens: int = 16, device="cpu", stream: OfficialColumnStream | None = None,
           flow: FlowFn | None = None) -> torch.Tensor:
    """Latents Float32 (rows, num_tokens, channels) from the model functions (module doc); `condition` must be
    built for guidance iff settings.cfg != 1. With `stream` the noise comes from it (generators are ignored).
    `flow(z, noise, scale) -> token`, when given, replaces `euler_flow(head, z, noise, num_steps, scale)`: a
    model's own integrator of the same Euler steps (e.g. models.eqar.head_loop.HeadEuler)."""
    if stream is None:
        check_generators(generators, rows)
    elif rows > stream.batch_size:
        raise ValueError(f"batch of {rows} rows exceeds the official stream's batch size {stream.batch_size}")
    guided = settings.cfg != 1.0
    out = torch.zeros(rows, num_tokens, channels, device=device)
    z = condition(0, None)
    for i in range(num_tokens):
        scale = cfg_scale_at(i, num_tokens, settings.cfg, settings.cfg_schedule) if guided else None
        noise = _normal_rows(generators, channels, device) if stream is None else stream.noise(rows, channels, device)
        token = euler_flow(head, z, noise, settings.num_steps, scale) if flow is None else flow(z, noise, scale)
        out[:, i] = token
        if i + 1 < num_tokens:
            z = condition(i + 1, token)
    if stream is not None:
        stream.rows_done += rows
    return out


@torch.no_grad()
def extend(condition: ConditionFn, head: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
           generators: Sequence[torch.Generator], settings: ColumnARSettings, *, prefix: torch.Tensor,
           kept: torch.Tensor, num_tokens: int, device="cpu", flow: FlowFn | None = None) -> torch.Tensor:
    """Continue given columns to the right: `sample` where row r's first kept[r] tokens are prefix[r, :kept[r]]
    (prefix (rows, >= max kept, channels) in the sampler's space), fed to `condition` as if sampled (teacher-forced
    into its KV cache), the rest sampled as `sample` samples them. Latents Float32 (rows, num_tokens, channels), the
    kept tokens being the prefix's values.

    Randomness as `sample`: row r draws one N(0, I) vector per token from generators[r], kept tokens included, so a
    sampled token gets the very noise it gets from `sample` (nothing kept = `sample`, bit for bit) and the cfg
    schedule is the one of a num_tokens run. Tokens that every row keeps skip the flow head."""
    rows, channels = int(prefix.shape[0]), int(prefix.shape[-1])
    check_generators(generators, rows)
    kept = torch.as_tensor(kept, device=device).long()
    if kept.shape != (rows,) or int(kept.min()) < 0 or int(kept.max()) > min(num_tokens, prefix.shape[1]):
        raise ValueError(f"kept must hold one count per row in [0, {min(num_tokens, prefix.shape[1])}], got "
                         f"{kept.tolist()}")
    prefix = prefix.to(device)
    guided = settings.cfg != 1.0
    out = torch.zeros(rows, num_tokens, channels, device=device)
    z = condition(0, None)
    for i in range(num_tokens):
        scale = cfg_scale_at(i, num_tokens, settings.cfg, settings.cfg_schedule) if guided else None
        noise = _normal_rows(generators, channels, device)
        forced = kept > i
        if bool(forced.all()):
            token = prefix[:, i].to(out.dtype)
        else:
            token = euler_flow(head, z, noise, settings.num_steps, scale) if flow is None else flow(z, noise, scale)
            if bool(forced.any()):
                token = torch.where(forced[:, None], prefix[:, min(i, prefix.shape[1] - 1)].to(token.dtype), token)
        out[:, i] = token
        if i + 1 < num_tokens:
            z = condition(i + 1, token)
    return out


__all__ = ["ColumnARSettings", "OfficialColumnStream", "sample", "extend", "euler_flow", "guided_velocity",
           "cfg_scale_at", "SCHEDULES"]
