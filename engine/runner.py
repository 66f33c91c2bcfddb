"""Mode dispatch: checks that need no large file come first (preflight), then the mode; bad input ends in one line.

Under torchrun every rank runs the same preflight, so they all stop together, each printing the line; an error raised
later (which may concern one rank only) is printed by the rank that met it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from core import dist
from core.loading import CheckpointError
from engine.config import ConfigError, Interrupted

ERRORS = (ConfigError, CheckpointError, FileNotFoundError, ValueError)


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def preflight(cfg, mode: str, fam) -> None:
    """Settings that cannot work, found before any weights, data or process group are touched."""
    import torch
    dev = str(cfg.device)
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={dev} but no CUDA device is available (torch.cuda.is_available() is False); "
                          f"use device=cpu or device=auto")
    on_cpu = dev == "cpu" or (dev == "auto" and not torch.cuda.is_available())
    keys = {"pretrain": ("train.precision",), "eval": ("eval.precision",),
            "search": ("search.precision", "eval.precision")}[mode]
    for key in keys:
        from omegaconf import OmegaConf
        if on_cpu and OmegaConf.select(cfg, key) == "fp16":
            raise ConfigError(f"{key}=fp16 needs CUDA (autocast + GradScaler), but this run is on the CPU; use "
                              f"{key}=bf16, fp32 or auto")
    if fam.check_config is not None:
        fam.check_config(cfg, mode)
    from models import build_model
    with torch.device("meta"):  # flavour and its arguments (e.g. --input_res) checked without memory
        model, _ = build_model(cfg, fam)
        if mode == "eval" and cfg.eval.source == "samples":
            fam.settings(cfg, model)  # sampling settings (strategy files, knobs a strategy would ignore)
    world, accum = _world(), int(cfg.train.grad_accum)
    if mode == "pretrain" and int(cfg.train.batch_size) % (world * accum):
        raise ConfigError(f"train.batch_size {cfg.train.batch_size} (global) is not divisible by {world} "
                          f"process(es) x train.grad_accum {accum}")
    if mode == "eval":
        n = int(cfg.eval.n)
        if n < world:
            raise ConfigError(f"eval.n (--eval_n) {n} is smaller than the {world} processes: every process needs at "
                              f"least one image")
        if n < 2 and any(m in list(cfg.eval.metrics) for m in ("fid", "sfid", "pr")):
            raise ConfigError(f"eval.n (--eval_n) {n}: FID needs at least 2 images")
        splits = int(cfg.eval.is_splits)
        if "is" in list(cfg.eval.metrics) and n < splits:
            raise ConfigError(f"eval.n (--eval_n) {n} is smaller than eval.is_splits {splits} (Inception-Score "
                              f"splits)")
    _check_writable(Path(cfg.output_dir))


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output_dir {out} cannot be created or written ({e.strerror or e})") from None


def run(cfg, mode: str, on_error=None) -> int:
    """0 on success, 2 after a one-line error, 130 after Ctrl-C. on_error(line): called with the printed line."""
    from models import get_family
    try:
        fam = get_family(cfg.family)
        if mode not in fam.modes:
            raise ConfigError(f"--mode {mode} is not supported for family '{fam.name}' (it supports: "
                              f"{', '.join(fam.modes)})")
        preflight(cfg, mode, fam)
    except ERRORS as e:
        _say(f"error: {e}", on_error)  # every rank: each one's own log then ends in the line
        return 2
    try:
        if mode == "pretrain":
            from engine.trainer import pretrain
            pretrain(cfg)
        elif mode == "eval":
            from engine.evaluate import evaluate
            evaluate(cfg)
        else:
            from engine.search import search
            search(cfg)
    except ERRORS as e:
        _log_line(f"error: {e}")
        _say(f"error: {e}", on_error)
        dist.destroy()
        return 2
    except KeyboardInterrupt:
        _log_line("error: interrupted")
        _say(f"error: interrupted during --mode {mode}; re-run the same command to resume", on_error)
        return 130
    except Interrupted as e:
        _log_line(f"error: {e}")
        _say(f"error: {e}", on_error)
        return 130
    dist.destroy()
    return 0


def _say(line: str, on_error) -> None:
    print(line, file=sys.stderr, flush=True)
    if on_error is not None:
        on_error(line)


def _log_line(line: str) -> None:
    """The error line in log.txt too, where this rank set up logging."""
    from engine.logging import log_file
    path = log_file()
    if path is not None:
        try:
            with open(path, "a") as f:
                f.write(line + "\n")
        except OSError:
            pass
