"""Mode dispatch with one-line errors for bad input (missing files, bad checkpoints, unknown keys)."""
from __future__ import annotations

import sys

from engine import dist
from engine.checkpoint import CheckpointError
from engine.config import ConfigError

SUPPORTED = {"pretrain": ("nat", "enat", "demo_vq"), "eval": ("nat", "enat"), "search": ("nat",)}


def run(cfg, mode: str) -> int:
    if cfg.family not in SUPPORTED[mode]:
        print(f"error: --mode {mode} is not supported for family '{cfg.family}' (supported: "
              f"{', '.join(SUPPORTED[mode])})", file=sys.stderr)
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
