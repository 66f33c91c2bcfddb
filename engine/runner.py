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
from engine.config import ConfigError, Interrupted, key_name, undeclared_key_error

ERRORS = (ConfigError, CheckpointError, FileNotFoundError, ValueError)


def _world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def preflight(cfg, mode: str, fam):
    """Settings that cannot work, found before any weights, data or process group are touched. Returns what an eval
    of samples works out here (engine.evaluate.Plan: its sizes and sampling settings), else None."""
    import torch
    dev = str(cfg.device)
    if dev.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={dev} but no CUDA device is available (torch.cuda.is_available() is False); "
                          f"use device=cpu or device=auto")
    on_cpu = dev == "cpu" or (dev == "auto" and not torch.cuda.is_available())
    keys = {"pretrain": ("train.precision",), "eval": ("eval.precision",), "edit": ("eval.precision",),
            "search": ("search.precision", "eval.precision")}[mode]
    for key in keys:
        from omegaconf import OmegaConf
        if on_cpu and OmegaConf.select(cfg, key) == "fp16":
            raise ConfigError(f"{key}=fp16 needs CUDA (autocast + GradScaler), but this run is on the CPU; use "
                              f"{key}=bf16, fp32 or auto")
    world, accum = _world(), int(cfg.train.grad_accum)
    if mode == "pretrain" and int(cfg.train.batch_size) % (world * accum):  # the one check of the batch split
        raise ConfigError(f"{key_name('train.batch_size', cfg)} {cfg.train.batch_size} (global) is not divisible "
                          f"by {world} process(es) x train.grad_accum {accum}")
    if mode in ("eval", "search") and (mode == "search" or cfg.eval.source == "samples"):
        from engine.compile_sampling import check
        check(cfg, "cpu" if on_cpu else "cuda")
    if fam.check_config is not None:
        fam.check_config(cfg, mode)
    plan = None
    from models import build_model
    with torch.device("meta"):  # flavour and its arguments (e.g. --input_res) checked without memory
        model, _ = build_model(cfg, fam)
        if mode == "eval" and cfg.eval.source == "samples":
            from engine.evaluate import eval_plan  # sizes and sampling settings, worked out once for the run
            plan = eval_plan(cfg, fam, model)
        elif mode == "pretrain" and int(cfg.train.sample_every) > 0 and fam.training.preview is None:
            if fam.sampling is None:
                raise ConfigError(f"{key_name('train.sample_every', cfg)} {cfg.train.sample_every}: family "
                                  f"'{fam.name}' has neither a preview nor a sampler to make one; set it to 0")
            fam.sampling.settings(cfg, model)  # the periodic sample grid's settings: refused now, not at its first step
    if mode == "edit":
        from engine.edit_mode import check
        check(cfg, fam, model)
        from engine.generate import weights_path
        weights_path(cfg, prefer_ema=bool(cfg.eval.use_ema))
        fam.sampling.settings(cfg, model)
    if mode == "eval":
        n, name = int(cfg.eval.n), key_name("eval.n", cfg)
        if n < world:
            raise ConfigError(f"{name} {n} is smaller than the {world} processes: every process needs at least one "
                              f"image")
        if n < 2 and any(m in list(cfg.eval.metrics) for m in ("fid", "sfid", "pr")):
            raise ConfigError(f"{name} {n}: FID needs at least 2 images")
        splits = int(cfg.eval.is_splits)
        if "is" in list(cfg.eval.metrics) and n < splits:
            raise ConfigError(f"{name} {n} is smaller than eval.is_splits {splits} (Inception-Score splits)")
        if cfg.eval.source == "samples":  # the weights file (a folder resolved by the family), not yet read
            from engine.generate import weights_path
            weights_path(cfg, prefer_ema=bool(cfg.eval.use_ema))
        if int(cfg.eval.save_png) != 0 and cfg.eval.png_dir is not None:
            _check_creatable(Path(str(cfg.eval.png_dir)), "eval.png_dir")
    if mode == "pretrain" and cfg.train.init_from is not None:
        from engine import checkpoint as ck
        if not (cfg.train.resume and ck.latest_checkpoint(Path(cfg.output_dir) / "checkpoints")):
            from engine.generate import weights_path
            weights_path(cfg, cfg.train.init_from, prefer_ema=bool(cfg.eval.use_ema))
    _check_writable(Path(cfg.output_dir))
    return plan


def _declared(fn, *args):
    """fn(*args), a read of a config key that no config file declares turned into a ConfigError (one line)."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError
    try:
        return fn(*args)
    except (ConfigAttributeError, ConfigKeyError) as e:
        err = undeclared_key_error(e)
        if err is None:
            raise
        raise err from None


def _check_creatable(path: Path, key: str) -> None:
    """A folder that will be written later (after sampling): refused now if it cannot exist, created nothing."""
    p = path.absolute()
    while not p.exists():
        p = p.parent
    if not p.is_dir():
        raise ConfigError(f"{key} {path} cannot be created: {p} is a file, not a folder")
    if not os.access(p, os.W_OK | os.X_OK):
        raise ConfigError(f"{key} {path} cannot be created or written: {p} is not writable")


def _check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write_probe_{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"output_dir {out} cannot be created or written ({e.strerror or e})") from None


def run(cfg, mode: str, on_error=None) -> int:
    """0 on success, 2 after a one-line error, 130 after Ctrl-C. on_error(line): called with the printed line by
    the one process that repeats it after torchrun's summary (rank 0, or the first rank that met the error)."""
    try:
        return _run(cfg, mode, on_error)
    finally:  # however the run ended: no watch thread may be left inside a store call when the process exits
        dist.stop_watch()


def _run(cfg, mode: str, on_error=None) -> int:
    from models import get_family
    try:
        fam = get_family(cfg.family)
        if mode == "edit" and "edit" not in fam.modes:
            raise ConfigError(f"family {fam.name} has no editing (its sampling sets no `edit`): --mode edit needs a "
                              f"family that can edit: nat, enat, nit or eqar")
        if mode not in fam.modes:
            raise ConfigError(f"--mode {mode} is not supported for family '{fam.name}' (it supports: "
                              f"{', '.join(fam.modes)})")
        plan = _declared(preflight, cfg, mode, fam)
    except ERRORS as e:
        _say(f"error: {e}", on_error if _rank0() else None)  # every rank: each one's own log ends in the line
        return 2
    dist.on_peer_error(_peer_line)
    try:
        if mode == "pretrain":
            from engine.trainer import pretrain
            _declared(pretrain, cfg)
        elif mode == "eval":
            from engine.evaluate import evaluate
            _declared(evaluate, cfg, plan)
        elif mode == "edit":
            from engine.edit_mode import edit
            _declared(edit, cfg)
        else:
            from engine.search import search
            _declared(search, cfg)
    except ERRORS as e:  # possibly on this rank only: the others learn it through the process group's store
        line = f"error: {e}"
        _log_line(line)
        first = dist.publish_error(line)  # the other ranks may wait for this one in a collective: they print it
        _say(line, on_error if first else None)  # the first rank to fail repeats it after the launcher's summary
        dist.await_peers()
        return 2
    except KeyboardInterrupt:
        _log_line("error: interrupted")
        _say(f"error: interrupted during --mode {mode}; re-run the same command to resume",
             on_error if _rank0() else None)
        return 130
    except Interrupted as e:
        _log_line(f"error: {e}")
        _say(f"error: {e}", on_error if _rank0() else None)
        return 130
    except Exception:
        if dist.failed_because_of_peer():  # a collective with a rank that stopped with a line, printed here too
            return 2
        raise
    dist.destroy()
    return 0


def _peer_line(line: str) -> None:
    """Another rank stopped with this line (possibly while this one waits for it in a collective)."""
    _log_line(line)
    print("\n" + line, file=sys.stderr, flush=True)  # on a line of its own, after a progress bar's partial one


def _rank0() -> bool:
    return os.environ.get("RANK", "0") == "0"


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
