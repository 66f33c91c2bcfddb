"""One entry point: `[torchrun ...] train.py --config X.yaml --mode pretrain|eval|search [key=value ...]`.

Official flags of each family's README (`--gen_steps 8`, `--enc_dec 22 2`, `--pretrained_path ...`) are accepted
as aliases of config keys (shared ones in engine/config.py OFFICIAL_FLAGS, the rest in each family's record).
"""
from __future__ import annotations

import argparse
import sys

MODES = ("pretrain", "eval", "search")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="recipe YAML (configs/...)")
    p.add_argument("--mode", default=None, choices=MODES,
                   help="default: eval when --pretrained_path is given (the ENAT README's eval commands name no "
                        "mode), else pretrain")
    args, rest = p.parse_known_args(argv)

    from engine.config import ConfigError, parse_command_line
    try:
        cfg, flags = parse_command_line(args.config, rest)
        mode = args.mode or ("eval" if "eval.pretrained_path" in flags else "pretrain")
    except (ConfigError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from engine.runner import run
    return run(cfg, mode)


if __name__ == "__main__":
    sys.exit(main())
