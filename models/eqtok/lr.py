"""Learning-rate schedules of the column tokenizer's two optimizers, as released (`LambdaWarmUpDecayScheduler` on the
autoencoder optimizer through LambdaLR; none on the discriminator's).

`train.ae_lr_schedule`:
- `engine`: the engine's schedule (train.lr_schedule) for every parameter (the demo's setting);
- `warmup_decay` (the release): the autoencoder group at train.lr * f(n), the discriminator group at train.lr, with
  n = the number of updates already made (LambdaLR's counter: the first update has n = 0) and
      f(n) = s + (1 - s) n / W                       n < W    (W = train.warmup_steps, s = lr_start_factor)
      f(n) = max(p * d^k, m),  k = floor((n - W) / I)  n >= W   (d = lr_decay, I = lr_decay_every, m = lr_min_factor;
                                                                 k = 0: p itself)
  where p = s + (1 - s)(W - 1) / W is the last warm-up value (p = s when W = 0): the released scheduler keeps
  returning its previous value after the warm-up, so the plateau is (W - 1) / W, not 1. Release: W 3000, s 0,
  d 0.2 every I = 30000, m 0.

The family's `group_lrs` (models/family.py) gives the engine each group's LR before every update, from the step
the engine counts (restored on resume, so a resumed run continues the schedule exactly). An update that a fp16
GradScaler skips still counts, as with Lightning's scheduler.
"""
from __future__ import annotations

SCHEDULES = ("engine", "warmup_decay")
GROUPS = ("autoencoder", "discriminator")  # the `name` of each parameter group


def warmup_decay_factor(n: int, warmup: int, decay: float, every: int, start: float = 0.0,
                        minimum: float = 0.0) -> float:
    if n < warmup:
        return start + (1.0 - start) * n / warmup
    plateau = start + (1.0 - start) * (warmup - 1) / warmup if warmup > 0 else start
    k = (n - warmup) // every
    return max(plateau * decay ** k, minimum) if k > 0 else plateau


def schedule_of(cfg) -> dict | None:
    """The autoencoder group's schedule (a plain dict, stored in the optimizer group), or None for `engine`."""
    t = cfg.train
    kind = str(t.ae_lr_schedule)
    if kind not in SCHEDULES:
        raise ValueError(f"train.ae_lr_schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
    if kind == "engine":
        return None
    decay, every = float(t.lr_decay), int(t.lr_decay_every)
    if not 0.0 < decay <= 1.0 or every <= 0:
        raise ValueError(f"train.lr_decay must be in (0, 1] and train.lr_decay_every > 0, got {decay} and {every}")
    warm, start, minimum = int(t.warmup_steps), float(t.lr_start_factor), float(t.lr_min_factor)
    if warmup_decay_factor(max(warm, 0), warm, decay, every, start, minimum) <= 0:
        raise ValueError(f"train.ae_lr_schedule=warmup_decay with warmup_steps={warm} and lr_start_factor={start} keeps "
                         f"the autoencoder LR at 0 after the warm-up (its plateau is (W - 1) / W of the way from the "
                         f"start factor to 1): use warmup_steps >= 2 or a start factor > 0")
    return {"kind": kind, "base": float(t.lr), "warmup": warm, "decay": decay, "every": every,
            "start": start, "minimum": minimum}


def lr_of(schedule: dict, n: int) -> float:
    return schedule["base"] * warmup_decay_factor(n, schedule["warmup"], schedule["decay"], schedule["every"],
                                                  schedule["start"], schedule["minimum"])


def group_lrs(step: int, cfg, engine_lr: float, groups: list[dict]) -> list[float]:
    """The family's `group_lrs`: under warmup_decay the autoencoder group at lr_of(schedule, step) (step = updates
    already made, LambdaLR's counter) and the discriminator group at train.lr; under `engine`, engine_lr for all."""
    s = schedule_of(cfg)
    if s is None:
        return [engine_lr] * len(groups)
    return [lr_of(s, step) if g.get("name") == "autoencoder" else s["base"] for g in groups]


def scheduled_groups(ae_params: list, disc_params: list, cfg) -> list[dict]:
    """Parameter groups (no weight decay, as the release's Adam), named for group_lrs; the schedule is checked here,
    before the first update."""
    schedule_of(cfg)
    groups = [{"params": ae_params, "weight_decay": 0.0, "name": GROUPS[0]},
              {"params": disc_params, "weight_decay": 0.0, "name": GROUPS[1]}]
    return [g for g in groups if g["params"]]
