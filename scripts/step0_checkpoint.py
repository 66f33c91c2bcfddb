"""Write the step-0 checkpoint of a recipe: the initial weights `--mode pretrain` would start from (same seed, same
builder), in the trainer's checkpoint format, so `--mode eval eval.pretrained_path=<it>` runs the untrained model
through exactly the eval path of a trained one (the honest baseline of an FID).

  python scripts/step0_checkpoint.py --config configs/demo/nit_fmnist.yaml --out outputs/x/step_0000000.pt [k=v ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from engine.config import load_config  # noqa: E402
from engine.optim import build_optimizer, make_ema  # noqa: E402
from engine.trainer import save_checkpoint  # noqa: E402
from models import build_model  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--out", required=True)
    args, rest = ap.parse_known_args(argv)
    cfg = load_config(args.config, rest)
    torch.manual_seed(int(cfg.seed))  # as engine.trainer.Trainer: the weights step 1 of a pretrain run starts from
    model, fam = build_model(cfg)
    groups = fam.training.param_groups(model, cfg) if fam.training.param_groups is not None else None
    opt = build_optimizer(model, cfg.train, groups)
    save_checkpoint(args.out, model, make_ema(model), opt, 0, fam.name, cfg)
    print(f"wrote {args.out} (step 0, family {fam.name}, flavour {cfg.model.flavour})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
