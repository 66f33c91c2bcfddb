"""The pretrain loop shared by every family: DDP, grad accumulation, autocast, EMA, atomic checkpoints, exact
resume, periodic sample grids."""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from engine import checkpoint as ck
from core import dist
from core.io import atomic_write_text
from core.seeding import step_seed
from engine.config import to_container, to_yaml
from engine.logging import logger, progress, setup_logging
from engine.optim import build_optimizer, ema_update, lr_at, make_ema
from engine.precision import autocast, grad_scaler
from models import TrainContext, build_model


def save_checkpoint(path, model, ema, opt, step, fam_name, cfg) -> None:
    atomic_save_obj = {
        "model": model.state_dict(), "ema": ema.state_dict(), "optimizer": opt.state_dict(), "step": step,
        "family": fam_name, "flavour": cfg.model.flavour, "config": to_container(cfg),
    }
    ck.atomic_save(atomic_save_obj, path)


def _metrics_file(out: Path) -> Path:
    return out / "metrics.jsonl"


def _truncate_metrics(out: Path, step: int) -> None:
    """Drop records past the checkpoint we resume from (a killed run may have logged further)."""
    f = _metrics_file(out)
    if f.exists():
        keep = [l for l in f.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= step]
        atomic_write_text(f, "".join(l + "\n" for l in keep))


def pretrain(cfg) -> dict:
    device = dist.init_distributed(cfg.device)
    out = Path(cfg.output_dir)
    setup_logging(str(out))
    rank, world = dist.rank(), dist.world_size()
    if dist.is_main():
        logger.info("config:\n" + to_yaml(cfg))
    tc = cfg.train
    accum = int(tc.grad_accum)
    if int(tc.batch_size) % (world * accum):
        raise ValueError(f"train.batch_size {tc.batch_size} is not divisible by world_size {world} x "
                         f"grad_accum {accum}")
    torch.manual_seed(int(cfg.seed))  # identical initial weights on every rank and in every run
    model, fam = build_model(cfg)
    model.to(device)
    ema = make_ema(model)
    opt = build_optimizer(model, tc, fam.param_groups(model, cfg) if fam.param_groups is not None else None)
    scaler = grad_scaler(device, tc.precision)
    ds = fam.dataset(cfg, "train")

    ckdir = out / "checkpoints"
    start = 0
    last = ck.latest_checkpoint(ckdir) if tc.resume else None
    if last is not None:
        state = ck.load_file(last)
        ck.check_family(state, fam.name, cfg.model.flavour, last)
        ck.load_strict(model, state["model"], str(last))
        ck.load_strict(ema, state["ema"], f"{last} (ema)")
        opt.load_state_dict(state["optimizer"])
        start = int(state["step"])
        logger.info(f"resumed from {last} at step {start}")
        if dist.is_main():
            _truncate_metrics(out, start)
    dist.barrier()

    n_params = sum(p.numel() for p in model.parameters())
    logger.info(f"family {fam.name}, flavour {cfg.model.flavour}: {n_params / 1e6:.2f}M params; world {world}, "
                f"global batch {tc.batch_size} ({accum} micro-batches per rank); training set of {_size(ds)}")
    train_model = model
    if tc.compile:
        train_model = torch.compile(train_model)
    if world > 1:
        train_model = DDP(train_model, device_ids=[device.index] if device.type == "cuda" else None,
                          find_unused_parameters=bool(fam.ddp_find_unused))
    ctx = TrainContext(cfg=cfg, step=start, ema=ema)
    steps = int(tc.steps)
    stop_at = min(steps, start + int(tc.max_steps_this_run)) if int(tc.max_steps_this_run) > 0 else steps
    bar = progress(total=steps, initial=start, desc="train")
    t0, seen, last_logs = time.time(), 0, {}
    model.train()
    for step in range(start, stop_at):
        lr = lr_at(step, tc)
        for g in opt.param_groups:
            g["lr"] = lr
        ctx.step = step
        micro = fam.batches(ds, cfg, step, rank, world)
        rows = sum(fam.batch_rows(b) for b in micro)
        logs_sum: dict = {}
        for mi, batch in enumerate(micro):
            torch.manual_seed(step_seed(int(cfg.seed), rank, step, mi))
            batch = fam.to_device(batch, device)
            sync = mi == len(micro) - 1 or world == 1
            ctxm = train_model.no_sync() if (not sync and isinstance(train_model, DDP)) else _null()
            with ctxm:
                with autocast(device, tc.precision):
                    loss, logs = fam.loss(train_model, batch, ctx)
                scaled = loss / accum
                (scaler.scale(scaled) if scaler else scaled).backward()
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / accum
        if scaler:
            scaler.unscale_(opt)
        if float(tc.grad_clip) > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), float(tc.grad_clip))
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()
        opt.zero_grad(set_to_none=True)
        ema_update(ema, model, float(fam.ema_decay(step, cfg) if fam.ema_decay is not None else tc.ema_decay))
        seen += rows * world  # images per second, counted on this rank
        done = step + 1
        bar.update(1)
        if done % int(tc.log_every) == 0 or done == stop_at:
            red = {k: float(dist.all_reduce_mean(torch.tensor(v, device=device))) for k, v in logs_sum.items()}
            if not all(math.isfinite(v) for v in red.values()):
                raise FloatingPointError(f"non-finite training loss at step {done}: {red}")
            ips = seen / max(time.time() - t0, 1e-9)
            last_logs = {"step": done, "lr": lr, **red, "img_per_s": ips}
            if dist.is_main():
                bar.set_postfix({k: f"{v:.4g}" for k, v in red.items()})
                logger.info(" ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}"
                                     for k, v in last_logs.items()))
                with open(_metrics_file(out), "a") as f:
                    f.write(json.dumps(last_logs) + "\n")
            t0, seen = time.time(), 0
        if done % int(tc.ckpt_every) == 0 or done == steps:
            if dist.is_main():
                save_checkpoint(ckdir / f"step_{done:07d}.pt", model, ema, opt, done, fam.name, cfg)
                ck.prune(ckdir, int(tc.keep_ckpts))
                logger.info(f"saved checkpoint step {done}")
            dist.barrier()
        if int(tc.sample_every) > 0 and done % int(tc.sample_every) == 0:
            from engine.generate import write_preview
            write_preview(ema, fam, cfg, device, out / "samples" / f"step_{done:07d}.png")
            model.train()
    bar.close()
    return last_logs


def _size(ds) -> str:
    try:
        return f"{len(ds)} rows"
    except TypeError:
        return type(ds).__name__


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False
