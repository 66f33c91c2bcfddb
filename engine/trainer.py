"""The pretrain loop shared by every family: DDP, grad accumulation, autocast, EMA, atomic checkpoints, exact
resume, periodic sample grids."""
from __future__ import annotations

import json
import math
import signal
import threading
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from engine import checkpoint as ck
from core import dist
from core.io import atomic_write_text
from core.seeding import step_seed
from engine.config import Interrupted, to_container, to_yaml
from engine.logging import logger, progress, setup_logging
from engine.optim import build_optimizer, ema_update, lr_at, make_ema
from engine.precision import autocast, grad_scaler
from models import TrainContext, build_model


class NonFiniteError(ValueError):
    """A loss or weight that is inf/NaN: nothing of it is checkpointed."""


# settings whose change between a checkpoint and its resume changes the run (the others only change logging)
RESUME_KEYS = ("family", "model", "train.batch_size", "train.grad_accum", "train.lr", "train.warmup_steps",
               "train.lr_schedule", "train.min_lr_ratio", "train.weight_decay", "train.betas", "train.ema_decay", "train.precision", "seed", "data", "loss")


def save_checkpoint(path, model, ema, opt, step, fam_name, cfg, scaler=None) -> None:
    weights = {"model": model.state_dict(), "ema": ema.state_dict()}
    if not all(bool(torch.isfinite(t).all()) for sd in weights.values() for t in sd.values() if t.is_floating_point()):
        raise NonFiniteError(f"non-finite weights at step {step}: not checkpointed (the previous checkpoint is kept); "
                             f"lower train.lr or set train.grad_clip")
    obj = {**weights, "optimizer": opt.state_dict(), "step": step,
           "family": fam_name, "flavour": cfg.model.flavour, "config": to_container(cfg)}
    if scaler is not None:
        obj["scaler"] = scaler.state_dict()
    ck.atomic_save(obj, path)


def _metrics_file(out: Path) -> Path:
    return out / "metrics.jsonl"


def _truncate_metrics(out: Path, step: int) -> None:
    """Drop records past the checkpoint we resume from (a killed run may have logged further)."""
    f = _metrics_file(out)
    if f.exists():
        keep = [l for l in f.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= step]
        atomic_write_text(f, "".join(l + "\n" for l in keep))


class Trainer:
    """One pretrain run: model, EMA, optimiser, data and the loop state, so that each piece is a method."""

    def __init__(self, cfg):
        self.cfg, self.tc = cfg, cfg.train
        self.device = dist.init_distributed(cfg.device)
        self.out = Path(cfg.output_dir)
        self.ckdir = self.out / "checkpoints"
        setup_logging(str(self.out))
        self.rank, self.world = dist.rank(), dist.world_size()
        if dist.is_main():
            logger.info("config:\n" + to_yaml(cfg))
        self.accum = int(self.tc.grad_accum)  # train.batch_size % (world x accum) was checked by runner.preflight
        torch.manual_seed(int(cfg.seed))  # identical initial weights on every rank and in every run
        self.model, self.fam = build_model(cfg)
        self.model.to(self.device)
        self.ema = make_ema(self.model)
        tr = self.fam.training
        groups = tr.param_groups(self.model, cfg) if tr.param_groups is not None else None
        self.opt = build_optimizer(self.model, self.tc, groups)
        self.scaler = grad_scaler(self.device, self.tc.precision)
        self.ds = self.fam.dataset(cfg, "train")
        self.start = _resume(cfg, self.fam, self.model, self.ema, self.opt, self.scaler, self.ckdir, self.out) \
            if self.tc.resume else 0
        if self.start == 0 and cfg.train.init_from is not None:
            from engine.generate import load_weights
            where = load_weights(self.model, cfg, self.fam.name, source=cfg.train.init_from,
                                 prefer_ema=bool(cfg.eval.use_ema), mapped=False)
            self.ema.load_state_dict(self.model.state_dict())
            logger.info(f"initialised from {where} (train.init_from; --pretrained_path with --mode pretrain); "
                        f"training starts at step 0")
        dist.barrier()
        n_params = sum(p.numel() for p in self.model.parameters())
        logger.info(f"family {self.fam.name}, flavour {cfg.model.flavour}: {n_params / 1e6:.2f}M params; world "
                    f"{self.world}, global batch {self.tc.batch_size} ({self.accum} micro-batches per rank); training "
                    f"set of {_size(self.ds)}")
        self.train_model = self.model
        if self.tc.compile:
            self.train_model = torch.compile(self.train_model)
        if self.world > 1:
            self.train_model = DDP(self.train_model,
                                   device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                   find_unused_parameters=bool(self.fam.training.ddp_find_unused(cfg)))
        self.ctx = TrainContext(cfg=cfg, step=self.start, ema=self.ema)
        self.steps = int(self.tc.steps)
        extra = int(self.tc.max_steps_this_run)
        self.stop_at = min(self.steps, self.start + extra) if extra > 0 else self.steps
        self.saved, self.last_logs = self.start, {}
        self.t0, self.seen = time.time(), 0
        self.ctrl_c = self.stop_now = False  # Ctrl-C seen on this rank / on some rank

    # ------------------------------------------------------------------------------------------------ pieces
    def update(self, step: int) -> tuple[dict, float]:
        """One optimiser update over this rank's micro-batches: (mean logs of this rank, lr)."""
        cfg, tc, device = self.cfg, self.tc, self.device
        lr = lr_at(step, tc)
        groups = self.opt.param_groups
        tr = self.fam.training
        lrs = tr.group_lrs(step, cfg, lr, groups) if tr.group_lrs is not None else [lr] * len(groups)
        for g, group_lr in zip(groups, lrs, strict=True):
            g["lr"] = group_lr
        self.ctx.step = step
        micro = self.fam.batches(self.ds, cfg, step, self.rank, self.world)
        rows = sum(tr.batch_rows(b) for b in micro)
        logs_sum: dict = {}
        for mi, batch in enumerate(micro):
            torch.manual_seed(step_seed(int(cfg.seed), self.rank, step, mi))
            batch = tr.to_device(batch, device)
            sync = mi == len(micro) - 1 or self.world == 1
            ctxm = self.train_model.no_sync() if (not sync and isinstance(self.train_model, DDP)) else _null()
            with ctxm:
                with autocast(device, tc.precision):
                    loss, logs = self.fam.loss(self.train_model, batch, self.ctx)
                scaled = loss / len(micro)
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v) / len(micro)
        finite, self.stop_now = _step_flags(logs_sum, device, self.ctrl_c)
        if not finite:
            kept = f"the last checkpoint (step {self.saved}) is kept" if self.saved else "no checkpoint was written"
            raise NonFiniteError(f"non-finite training loss at step {step + 1} ({_fmt(logs_sum)}): stopped before "
                                 f"the update; {kept}. Lower train.lr or set train.grad_clip")
        if self.scaler:
            self.scaler.unscale_(self.opt)
        if float(tc.grad_clip) > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), float(tc.grad_clip))
        if self.scaler:
            self.scaler.step(self.opt)
            self.scaler.update()
        else:
            self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        decay = tr.ema_decay(step, cfg) if tr.ema_decay is not None else tc.ema_decay
        ema_update(self.ema, self.model, float(decay))
        self.seen += rows * self.world  # images per second, counted on this rank
        return logs_sum, lr

    def log(self, done: int, logs_sum: dict, lr: float, bar) -> None:
        red = {k: float(dist.all_reduce_mean(torch.tensor(v, device=self.device))) for k, v in logs_sum.items()}
        ips = self.seen / max(time.time() - self.t0, 1e-9)
        self.last_logs = {"step": done, "lr": lr, **red, "img_per_s": ips}
        if dist.is_main():
            bar.set_postfix({k: f"{v:.4g}" for k, v in red.items()})
            logger.info(" ".join(f"{k} {v:.5g}" if isinstance(v, float) else f"{k} {v}"
                                 for k, v in self.last_logs.items()))
            with open(_metrics_file(self.out), "a") as f:
                f.write(json.dumps(self.last_logs) + "\n")
        self.t0, self.seen = time.time(), 0

    def save(self, done: int) -> None:
        if dist.is_main():
            _save(self.cfg, self.fam, self.model, self.ema, self.opt, self.scaler, self.ckdir, done)
        dist.barrier()
        self.saved = done

    # ---------------------------------------------------------------------------------------------------- loop
    def run(self) -> dict:
        tc = self.tc
        bar = progress(total=self.steps, initial=self.start, desc="train")
        self.model.train()
        step = self.start
        # Ctrl-C ends the run between two steps (every rank at the same one): a KeyboardInterrupt raised at any
        # bytecode could leave a lock (logging, progress bar, a file write) held and the process hung. A second
        # Ctrl-C interrupts at once.
        self.ctrl_c = self.stop_now = False
        previous = _defer_sigint(self)
        try:
            for step in range(self.start, self.stop_at):
                logs_sum, lr = self.update(step)
                done = step + 1
                bar.update(1)
                if done % int(tc.log_every) == 0 or done == self.stop_at:
                    self.log(done, logs_sum, lr, bar)
                if done % int(tc.ckpt_every) == 0 or done == self.stop_at:
                    self.save(done)  # also when train.max_steps_this_run stops early: nothing done is lost
                if int(tc.sample_every) > 0 and done % int(tc.sample_every) == 0:
                    from engine.generate import write_preview
                    write_preview(self.ema, self.fam, self.cfg, self.device,
                                  self.out / "samples" / f"step_{done:07d}.png")
                    self.model.train()
                if self.stop_now:
                    raise KeyboardInterrupt
        except KeyboardInterrupt:
            bar.close()
            raise Interrupted(f"interrupted at step {step}; last checkpoint step {self.saved} in {self.ckdir}; "
                              f"re-run the same command to resume") from None
        except BaseException:
            bar.close()  # before the error line, not after it when the bar is collected
            raise
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
        bar.close()
        if dist.is_main():
            logger.info(f"done: step {self.stop_at}/{self.steps}; checkpoints in {self.ckdir}, losses in "
                        f"{_metrics_file(self.out)}")
        return self.last_logs


def _defer_sigint(trainer):
    """Route SIGINT to trainer.ctrl_c (the main thread only can set handlers); returns the previous handler."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def on_sigint(signum, frame):
        if trainer.ctrl_c:
            raise KeyboardInterrupt
        trainer.ctrl_c = True

    return signal.signal(signal.SIGINT, on_sigint)


def pretrain(cfg) -> dict:
    return Trainer(cfg).run()


def _fmt(logs: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in logs.items())


def _step_flags(logs: dict, device, ctrl_c: bool) -> tuple[bool, bool]:
    """(no rank has a non-finite loss value, some rank was interrupted): one tiny all-reduce per step, so every rank
    stops at the same step."""
    bad = torch.tensor([0.0 if all(math.isfinite(v) for v in logs.values()) else 1.0, float(ctrl_c)], device=device)
    red = dist.all_reduce_mean(bad)
    return float(red[0]) == 0.0, float(red[1]) > 0.0


def _save(cfg, fam, model, ema, opt, scaler, ckdir, done) -> None:
    save_checkpoint(ckdir / f"step_{done:07d}.pt", model, ema, opt, done, fam.name, cfg, scaler)
    ck.prune(ckdir, int(cfg.train.keep_ckpts))
    logger.info(f"saved checkpoint step {done}")


def _resume(cfg, fam, model, ema, opt, scaler, ckdir: Path, out: Path) -> int:
    """Load the latest checkpoint (if any) and return its step; a broken one stops with the previous one named."""
    found = ck.list_checkpoints(ckdir)
    if not found:
        return 0
    last = found[-1]
    try:
        state = ck.load_file(last)
    except ck.CheckpointError as e:
        prev = f"; the previous one is {found[-2]}: move {last.name} away to resume from it" if len(found) > 1 else \
            "; move it away to start from scratch"
        raise ck.CheckpointError(f"the latest checkpoint cannot be resumed: {e}{prev}") from None
    ck.check_family(state, fam.name, cfg.model.flavour, last)
    ck.load_strict(model, state["model"], str(last))
    ck.load_strict(ema, state["ema"], f"{last} (ema)")
    opt.load_state_dict(state["optimizer"])
    if scaler is not None and state.get("scaler") is not None:
        scaler.load_state_dict(state["scaler"])
    start = int(state["step"])
    changed = _changed_settings(state.get("config") or {}, to_container(cfg))
    logger.info(f"resumed from {last} at step {start}")
    if changed:
        logger.warning(f"resuming with settings that differ from the checkpoint's: {'; '.join(changed)}")
    if dist.is_main():
        _truncate_metrics(out, start)
    return start


def _changed_settings(old: dict, new: dict) -> list[str]:
    out = []
    for key in RESUME_KEYS:
        a, b = old, new
        for part in key.split("."):
            a = a.get(part) if isinstance(a, dict) else None
            b = b.get(part) if isinstance(b, dict) else None
        if a != b and a is not None:
            out.append(f"{key} {a!r} -> {b!r}")
    return out


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
