"""Config = configs/base.yaml <- recipe YAML <- official flags <- key=value overrides (later wins).

Unknown keys are errors that name the key and the nearest valid one. The resolved config is printed at start
and saved into every checkpoint.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs" / "base.yaml"

# official flag -> (config key, number of values). Flags from the AutoNAT and ENAT READMEs.
OFFICIAL_FLAGS = {
    "--gen_steps": ("sample.gen_steps", 1),
    "--searched_strategy": ("sample.strategy", 1),
    "--cfg_scale": ("sample.cfg_scale", 1),
    "--mask_temp": ("sample.mask_temp", 1),
    "--samp_temp": ("sample.samp_temp", 1),
    "--pretrained_path": ("eval.pretrained_path", 1),
    "--eval_n": ("eval.n", 1),
    "--test_bsz": ("eval.batch_size", 1),
    "--reference_image_path": ("eval.ref_stats", 1),
    "--beta_alpha_beta": ("loss.beta_alpha_beta", 2),
    "--enc_dec": ("model.enc_dec", 2),
    "--embed_dim": ("model.embed_dim", 1),
    "--num_heads": ("model.num_heads", 1),
    "--input_res": ("data.input_res", 1),
    "--output_dir": ("output_dir", 1),
    "--train_steps": ("train.steps", 1),
    "--batch_size": ("train.batch_size", 1),
    "--lr": ("train.lr", 1),
    "--max_upd": ("search.max_upd", 1),
    "--clip_grad": ("search.clip_grad", 1),
    "--sche_lr": ("search.lr_ratio", 1),
    "--unb_lr": ("search.lr_other", 1),
    "--grad_estimate_step_size": ("search.fd_step_ratio", 1),
    "--unb_grad_estimate_step_size": ("search.fd_step_other", 1),
    "--sche_moment": ("search.momentum", 1),
    "--reuse_prob": ("loss.reuse_prob", 1),
    "--wd": ("train.weight_decay", 1),
    "--ema_rate": ("train.ema_decay", 1),
    "--warmup_steps": ("train.warmup_steps", 1),
    "--save_interval": ("train.ckpt_every", 1),
    "--log_interval": ("train.log_every", 1),
    "--seed": ("seed", 1),
}


# `export ACCELERATE_MIXED_PRECISION=fp16` precedes the official commands (the official code runs under accelerate):
# honoured as train/eval/search precision, below explicit key=value overrides.
ACCELERATE_ENV = "ACCELERATE_MIXED_PRECISION"
ACCELERATE_PRECISION = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}
PRECISION_KEYS = ("train.precision", "eval.precision", "search.precision")


def env_flags(environ=None) -> dict:
    """Config keys set by the environment of the official commands ({} when it sets nothing)."""
    val = (environ if environ is not None else os.environ).get(ACCELERATE_ENV)
    if val is None or val == "":
        return {}
    if val not in ACCELERATE_PRECISION:
        raise ConfigError(f"{ACCELERATE_ENV}={val!r}: expected one of {sorted(ACCELERATE_PRECISION)}")
    return {k: ACCELERATE_PRECISION[val] for k in PRECISION_KEYS}


class ConfigError(ValueError):
    pass


def _all_keys(cfg, prefix=""):
    out = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        out.append(full)
        if isinstance(v, DictConfig):
            out += _all_keys(v, full + ".")
    return out


def _check_known(cfg: DictConfig, base: DictConfig, where: str, prefix: str = "") -> None:
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        if full.startswith("model."):  # flavour kwargs: checked by the builder
            continue
        if k not in base:
            near = difflib.get_close_matches(full, _all_keys(_ROOT_BASE[0]), n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            raise ConfigError(f"unknown config key '{full}' in {where}{hint}")
        if isinstance(v, DictConfig) and isinstance(base[k], DictConfig):
            _check_known(v, base[k], where, full + ".")


_ROOT_BASE: list = [None]


def _parse_value(s: str):
    """Command-line text -> int/float/bool/None/list/str (YAML rules, but '1e-3' is a float, not a string)."""
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    try:
        return yaml.safe_load(s)
    except yaml.YAMLError:
        return s


def split_official_flags(argv: list[str]) -> tuple[dict, list[str]]:
    """Turn official `--flag v [v2]` / `--flag=v` arguments into {key: value}; return the rest untouched."""
    found, rest, i = {}, [], 0
    while i < len(argv):
        a = argv[i]
        name, eq, inline = a.partition("=")
        if name in OFFICIAL_FLAGS:
            key, n = OFFICIAL_FLAGS[name]
            vals = [inline] if eq else argv[i + 1:i + 1 + n]
            if len(vals) != n or (not eq and any(v.startswith("--") for v in vals)):
                raise ConfigError(f"flag {name} takes {n} value(s) (it sets {key})")
            parsed = [_parse_value(v) for v in vals]
            found[key] = parsed[0] if n == 1 else parsed
            i += 1 if eq else 1 + n
        else:
            rest.append(a)
            i += 1
    return found, rest


def load_config(path: str | os.PathLike | None, overrides: list[str] = (), flags: dict | None = None) -> DictConfig:
    base = OmegaConf.load(BASE)
    _ROOT_BASE[0] = base
    cfg = base
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        recipe = OmegaConf.load(p)
        _check_known(recipe, base, str(p))
        cfg = OmegaConf.merge(cfg, recipe)
    dotted = {}
    for key, val in (flags or {}).items():
        dotted[key] = val
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' is not key=value (unknown argument?)")
        k, v = ov.split("=", 1)
        dotted[k.strip()] = _parse_value(v)
    for k, v in dotted.items():
        node = OmegaConf.create()
        OmegaConf.update(node, k, v, force_add=True)
        _check_known(node, base, "command line")
        OmegaConf.update(cfg, k, v, force_add=True)
    return cfg


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg


def from_container(d: dict) -> DictConfig:
    return OmegaConf.create(d)
