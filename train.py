"""One entry point: `[torchrun ...] train.py --config X.yaml --mode pretrain|eval|search|edit [key=value ...]`.

Official flags of each family's README (`--gen_steps 8`, `--enc_dec 22 2`, `--pretrained_path ...`) are accepted
as aliases of config keys (shared ones in engine/config.py OFFICIAL_FLAGS, the rest in each family's record).
Every key and its default: configs/base.yaml, then configs/family/<family>.yaml; set any of them as key=value.
Bad input ends in one line `error: ...` and exit code 2.
"""
from __future__ import annotations

import argparse
import os
import sys

MODES = ("pretrain", "eval", "search", "edit")


def _flag_table() -> str:
    from engine.config import OFFICIAL_FLAGS
    from models import FAMILY_NAMES, get_family
    lines = ["official flags (aliases of config keys):",
             "  all families: " + " ".join(sorted(OFFICIAL_FLAGS))]
    for name in FAMILY_NAMES:
        own = sorted(get_family(name).official_flags)
        if own:
            lines.append(f"  {name}: " + " ".join(own))
    return "\n".join(lines)


def _family_flags(name: str) -> dict:
    from models import get_family
    return get_family(name).official_flags


def _implied_mode(family: str, argv: list[str], flags: dict) -> str:
    """The run mode of a command without --mode: the one its official flags select (Family.mode_flags: flags that
    only the family's eval or training script has), else eval with --pretrained_path (the ENAT README's eval
    commands), else pretrain. Flags of both scripts in one command: an error asking for --mode."""
    from engine.config import ConfigError
    from models import get_family
    table = get_family(family).mode_flags
    given = [a.split("=", 1)[0] for a in argv if a.startswith("--")]
    picked = {}
    for flag in given:
        if flag in table:
            picked.setdefault(table[flag], flag)
    if len(picked) > 1:
        said = " and ".join(f"{f} ({m})" for m, f in picked.items())
        raise ConfigError(f"the flags {said} belong to different official scripts of family '{family}': say which "
                          f"run this is with --mode {' or --mode '.join(picked)}")
    if picked:
        return next(iter(picked))
    return "eval" if "eval.pretrained_path" in flags else "pretrain"


def _parser(with_flags: bool) -> argparse.ArgumentParser:
    epilog = _flag_table() if with_flags else None
    p = argparse.ArgumentParser(description=__doc__, epilog=epilog, allow_abbrev=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="recipe YAML (configs/...)")
    p.add_argument("--mode", default=None,
                   help="pretrain | eval | search | edit (inpaint/outpaint the PNGs of edit.images); default: the "
                        "mode the family's official flags select (flags only its eval script has: NiT's sampler "
                        "flags, the equivariant AR's --eval_bsz --num_images "
                        "--cfg --metrics), else eval when --pretrained_path is given (the ENAT README's eval commands "
                        "name no mode), else pretrain. Another value goes to the family's official "
                        "flags (NiT's --mode sde|ode names its solver) and the run mode is then eval")
    return p


def _repeat_after_launcher(line: str) -> None:
    """Under torchrun the launcher prints its failure summary after the workers exit, burying the one line that says
    what is wrong: the calling process (one per run: rank 0, or the first rank that met the error) leaves a tiny
    process behind that prints the line again once the launcher is gone."""
    if "TORCHELASTIC_RUN_ID" not in os.environ or not hasattr(os, "fork"):
        return
    launcher = os.getppid()
    sys.stderr.flush()
    if os.fork() != 0:
        return
    import signal
    import time
    os.setsid()  # out of the worker's process group, which the launcher kills when it cleans up
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    deadline = time.time() + 60
    while time.time() < deadline and _alive(launcher):
        time.sleep(0.05)
    os.write(2, (line + "\n").encode())
    os._exit(0)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except OSError:
        return False


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args, rest = _parser(with_flags=any(a in ("-h", "--help") for a in argv)).parse_known_args(argv)

    from engine.config import ConfigError, command_family, parse_command_line
    try:
        family_mode = args.mode is not None and args.mode not in MODES
        if family_mode:
            if "--mode" not in _family_flags(command_family(args.config, rest)):
                raise ConfigError(f"--mode {args.mode}: expected one of {', '.join(MODES)}")
            rest = ["--mode", args.mode, *rest]
        picked = {}

        def run_mode(family: str, flags: dict) -> str:  # known before the config is final: it derives keys per mode
            picked["mode"] = "eval" if family_mode else args.mode or _implied_mode(family, rest, flags)
            return picked["mode"]

        cfg, flags = parse_command_line(args.config, rest, mode=run_mode)
        mode = picked["mode"]
        if mode == "pretrain" and "eval.pretrained_path" in flags and cfg.train.init_from is None:
            cfg.train.init_from = flags["eval.pretrained_path"]  # the official flag, given to a training run
    except (ConfigError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)  # every rank, so that each one's log ends in the line
        if os.environ.get("RANK", "0") == "0":  # once per run
            _repeat_after_launcher(f"error: {e}")
        return 2

    from engine.runner import run
    return run(cfg, mode, on_error=_repeat_after_launcher)


if __name__ == "__main__":
    sys.exit(main())
