"""Mode dispatch with one-line errors for bad input (missing files, bad checkpoints, unknown keys)."""
from __future__ import annotations

import sys

from core import dist
from core.loading import CheckpointError
from engine.config import ConfigError


def run(cfg, mode: str) -> int:
    from models import get_family
    try:
        fam = get_family(cfg.family)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if mode not in fam.modes:
        print(f"error: --mode {mode} is not supported for family '{fam.name}' (it supports: "
              f"{', '.join(fam.modes)})", file=sys.stderr)
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
    except (ConfigError, CheckpointError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        dist.destroy()
        return 2
    dist.destroy()
    return 0
