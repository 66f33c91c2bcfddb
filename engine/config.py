"""Config = configs/base.yaml <- the family's configs/family/<name>.yaml <- recipe YAML <- official flags <-
key=value overrides (later wins).

The family is read first (a `family=` override, else the recipe's `family:`, else the base default), because it
decides which sections and official flags exist. Unknown keys are errors that name the key and the nearest valid
one. Keys a family derives from others (Family.derive_config) are set while the config loads, so the config printed
at start and saved into every checkpoint is the one that runs. The loaded config is in OmegaConf struct mode: code
that reads a key declared nowhere stops with `undeclared_key_error`'s one line, not a traceback.
"""
from __future__ import annotations

import difflib
import os
from pathlib import Path

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import InterpolationResolutionError

ROOT = Path(__file__).resolve().parent.parent
BASE = ROOT / "configs" / "base.yaml"

# official flag -> (config key, number of values[, value of a switch]), for flags whose meaning is the same in every
# family's README; a family adds its own (Family.official_flags), so that one flag name can mean different things in
# two families. A flag of 0 values is a switch: it sets True, or the value given third.
OFFICIAL_FLAGS = {
    "--pretrained_path": ("eval.pretrained_path", 1),
    "--eval_n": ("eval.n", 1),
    "--test_bsz": ("eval.batch_size", 1),
    "--reference_image_path": ("eval.ref_stats", 1),
    "--output_dir": ("output_dir", 1),
    "--train_steps": ("train.steps", 1),
    "--batch_size": ("train.batch_size", 1),
    "--lr": ("train.lr", 1),
    "--wd": ("train.weight_decay", 1),
    "--ema_rate": ("train.ema_decay", 1),
    "--warmup_steps": ("train.warmup_steps", 1),
    "--save_interval": ("train.ckpt_every", 1),
    "--log_interval": ("train.log_every", 1),
    "--seed": ("seed", 1),
}

# `export ACCELERATE_MIXED_PRECISION=fp16` precedes the official commands (the official code runs under accelerate):
# honoured as train/eval/search precision (those the family has), below explicit key=value overrides.
ACCELERATE_ENV = "ACCELERATE_MIXED_PRECISION"
ACCELERATE_PRECISION = {"no": "fp32", "fp16": "fp16", "bf16": "bf16"}
PRECISION_KEYS = ("train.precision", "eval.precision", "search.precision")


class ConfigError(ValueError):
    pass


def flag_for(key: str, family: str | None) -> str | None:
    """The official flag that sets config key `key` in the commands of `family`: the family's own flag first (NiT's
    --num-fid-samples for eval.n), else the shared one (--eval_n); None when no flag sets it."""
    own = {}
    if family is not None:
        from models import get_family
        try:
            own = get_family(str(family)).official_flags
        except ValueError:
            pass
        for flag, (k, *_rest) in own.items():
            if k == key:
                return flag
    for flag, (k, *_rest) in OFFICIAL_FLAGS.items():
        if k == key and flag not in own:  # a family flag of the same name means something else there
            return flag
    return None


def key_name(key: str, cfg_or_family) -> str:
    """`key (--flag)` with the flag of the family in use, for error lines; `key` alone when no flag sets it."""
    fam = cfg_or_family if cfg_or_family is None or isinstance(cfg_or_family, str) else cfg_or_family.get("family")
    flag = flag_for(key, fam)
    return f"{key} ({flag})" if flag else key


class Interrupted(Exception):
    """Ctrl-C in a mode: the message says where it stopped and how to go on."""


def env_flags(environ=None) -> dict:
    """Config keys set by the environment of the official commands ({} when it sets nothing)."""
    val = (environ if environ is not None else os.environ).get(ACCELERATE_ENV)
    if val is None or val == "":
        return {}
    if val not in ACCELERATE_PRECISION:
        raise ConfigError(f"{ACCELERATE_ENV}={val!r}: expected one of {sorted(ACCELERATE_PRECISION)}")
    return {k: ACCELERATE_PRECISION[val] for k in PRECISION_KEYS}


# ------------------------------------------------------------------------------------------------------ parsing
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


def _overrides(overrides) -> dict:
    out = {}
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override '{ov}' is not key=value (unknown argument?)")
        k, v = ov.split("=", 1)
        out[k.strip()] = _parse_value(v)
    return out


def split_official_flags(argv: list[str], table: dict | None = None) -> tuple[dict, list[str]]:
    """Turn official `--flag v [v2]` / `--flag=v` arguments of `table` (default: the shared flags) into
    {key: value}; return the rest untouched."""
    table = OFFICIAL_FLAGS if table is None else table
    found, rest, i = {}, [], 0
    while i < len(argv):
        a = argv[i]
        name, eq, inline = a.partition("=")
        if name in table:
            key, n, *const = table[name]
            if n == 0:  # a switch: on, or the constant the table gives (e.g. --slice_vae -> decode one at a time)
                if eq:
                    raise ConfigError(f"flag {name} takes no value (it sets {key})")
                found[key] = const[0] if const else True
                i += 1
                continue
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


def _load_yaml(path: Path, what: str) -> DictConfig:
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        node = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError and OmegaConf's own grammar errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: not a valid YAML {what} ({first})") from None
    if not isinstance(node, DictConfig):
        raise ConfigError(f"{path}: a {what} must be a mapping of keys, got a {type(node).__name__}")
    return node


def _family_of(recipe: DictConfig | None, dotted: dict, base: DictConfig) -> str:
    if "family" in dotted:
        return str(dotted["family"])
    if recipe is not None and "family" in recipe:
        return str(recipe.family)
    return str(base.family)


def family_schema(name: str) -> tuple[DictConfig, dict]:
    """(base.yaml merged with the family's config file, the official flags valid for this family)."""
    from models import get_family
    base = _load_yaml(BASE, "base config")
    try:
        fam = get_family(name)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    schema = base
    p = Path(fam.config)
    schema = OmegaConf.merge(base, _load_yaml(p if p.is_absolute() else ROOT / p, f"config of family '{name}'"))
    if "search" not in fam.modes:  # no --mode search: a search key would be accepted and never read
        del schema["search"]
    return schema, {**OFFICIAL_FLAGS, **fam.official_flags}


def family_file(name: str) -> str:
    """The config file of family `name`, as its record names it (for messages)."""
    from models import get_family
    try:
        cfg_file = get_family(str(name)).config
    except ValueError:
        cfg_file = None
    return str(cfg_file) if cfg_file is not None else f"the config file of family '{name}' (Family.config)"


def undeclared_key_error(e: BaseException) -> ConfigError | None:
    """The one-line error for code that read a key of the run's (struct-mode) config that no config file declares,
    naming the key, the file that read it and the file that should declare it: configs/base.yaml for the engine's
    reads (engine/, train.py), the family's config file for the rest. None for any other exception."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError
    node = getattr(e, "parent_node", None)
    if not isinstance(e, (ConfigAttributeError, ConfigKeyError)) or node is None:
        return None
    root = node._get_root()
    if not (isinstance(root, DictConfig) and OmegaConf.is_struct(root)):
        return None  # not a loaded config (a checkpoint's stored one, a family's own YAML)
    import sys
    import traceback
    reader = None  # the innermost frame of project code (or of a family module outside the repository)
    libs = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    for frame in traceback.extract_tb(e.__traceback__):
        f = Path(frame.filename).resolve()
        if frame.filename.startswith("<") or "site-packages" in f.parts or ".venv" in f.parts or \
                any(f.is_relative_to(lib) for lib in libs):
            continue
        reader = f.relative_to(ROOT).as_posix() if f.is_relative_to(ROOT) else str(f)
    engine = reader is None or reader.startswith("engine/") or reader == "train.py"
    family = root.get("family")
    base = BASE.relative_to(ROOT) if BASE.is_relative_to(ROOT) else BASE
    declare = str(base) if engine else family_file(family)
    key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
    return ConfigError(f"config key '{key}' is read by {reader or 'the engine'} but declared in no config file "
                       f"(family '{family}'): declare it with its default in {declare}")


# --------------------------------------------------------------------------------------------------- checking
def _all_keys(cfg, prefix=""):
    out = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        out.append(full)
        if isinstance(v, DictConfig):
            out += _all_keys(v, full + ".")
    return out


def _check_known(cfg: DictConfig, schema: DictConfig, where: str, family: str, prefix: str = "",
                 root: DictConfig | None = None) -> None:
    root = schema if root is None else root
    for k, v in cfg.items_ex(resolve=False):  # interpolations are resolved (and their errors reported) by validate
        full = f"{prefix}{k}"
        if full.startswith("model."):  # flavour kwargs: checked by the builder
            continue
        if k not in schema:
            near = difflib.get_close_matches(full, _all_keys(root), n=1, cutoff=0.5)
            hint = f"; did you mean '{near[0]}'?" if near else ""
            if full == "search":  # configs/base.yaml's section, dropped for a family without a search space
                hint = f": family '{family}' has no --mode search"
            raise ConfigError(f"unknown config key '{full}' in {where} (family '{family}'){hint}")
        if isinstance(v, DictConfig) and isinstance(schema[k], DictConfig):
            _check_known(v, schema[k], where, family, full + ".", root)


# value checks of the shared keys, beyond the type the schema's default gives: (test, what is expected)
_POS, _NONNEG = (lambda v: v >= 1, "an integer >= 1"), (lambda v: v >= 0, "a number >= 0")
CHOICES = {
    "device": ("auto", "cpu", "cuda"),
    "train.precision": ("fp32", "bf16", "fp16", "auto"),
    "eval.precision": ("fp32", "bf16", "fp16", "auto"),
    "search.precision": ("fp32", "bf16", "fp16", "auto"),
    "eval.inception_dtype": ("fp32", "bf16", "auto"),
    "eval.source": ("samples", "reconstructions", "random_tokens"),
    "eval.labels": ("balanced", "random"),
    "eval.fid_mode": ("pytorch-fid", "adm"),
    "search.gradient": ("fd", "spsa"),
    "train.lr_schedule": ("constant", "cosine"),
    "tokenizer.kind": None,  # the names in tokenizer.TOKENIZERS (filled in on first use: no import at start-up)
}
SWITCH_OR_AUTO = ("sample.compile",)  # true, false or the string auto
RANGES = {
    "train.steps": _POS, "train.batch_size": _POS, "train.grad_accum": _POS, "train.log_every": _POS,
    "train.ckpt_every": _POS, "train.lr": _NONNEG, "train.warmup_steps": _NONNEG, "train.weight_decay": _NONNEG,
    "train.grad_clip": _NONNEG, "train.keep_ckpts": _NONNEG, "train.sample_every": _NONNEG,
    "train.max_steps_this_run": _NONNEG, "train.eps": (lambda v: v > 0, "a number > 0"),
    "train.min_lr_ratio": (lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "train.ema_decay": (lambda v: 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "train.betas": (lambda v: len(v) == 2 and all(0.0 <= b < 1.0 for b in v), "two numbers in [0, 1)"),
    "eval.n": _POS, "eval.batch_size": _POS, "eval.ref_n": _POS,
    "eval.decode_batch": _NONNEG, "eval.save_png": (lambda v: v >= -1, "an integer >= -1 (-1: all)"), "eval.is_splits": _POS,
    "eval.is_std_ddof": (lambda v: v in (0, 1), "0 or 1"), "search.max_upd": _NONNEG, "search.spsa_pairs": _POS,
    "search.budget_images": _NONNEG,
    "loss.label_drop": (lambda v: 0.0 <= v <= 1.0, "a probability in [0, 1]"),
    "loss.repa_coeff": (lambda v: v >= 0, "a number >= 0 (0 or loss.repa_encoder=null: no REPA term)"),
}


def _type_name(v) -> str:
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string", list: "a list"}.get(
        type(v), type(v).__name__)


def _coerce(key: str, value, default):
    """The value in the type of the schema's default (int keys take integral floats such as 1e3); else an error."""
    if default is None or value is None:
        return value
    if key in SWITCH_OR_AUTO:
        if isinstance(value, bool) or value == "auto":
            return value
        raise ConfigError(f"config key '{key}' must be true, false or auto, got {value!r}")
    bad = ConfigError(f"config key '{key}' must be {_type_name(default)}, got {value!r}")
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad
        return value
    if isinstance(default, list):
        if not isinstance(value, list):
            raise bad
        if default and not isinstance(default[0], (list, dict)):
            return [_coerce(f"{key}[{i}]", v, default[0]) for i, v in enumerate(value)]
    return value


def _choices(key: str) -> tuple:
    if CHOICES[key] is None and key == "tokenizer.kind":
        from tokenizer import TOKENIZERS
        CHOICES[key] = tuple(TOKENIZERS)
    return CHOICES[key]


def validate(cfg: DictConfig, schema: DictConfig, where=lambda key: "the config") -> None:
    """Every value against its default's type and the shared keys' choices and ranges, naming the key (and the
    official flag that sets it in the family in use). where(key): the file (or command line) a key's value came
    from, for an interpolation that cannot be resolved."""
    from omegaconf.errors import OmegaConfBaseException
    try:
        resolved = OmegaConf.to_container(cfg, resolve=True)
    except OmegaConfBaseException as e:  # ${a.missing.key}, ${oc.env:UNSET}: OmegaConf's text spans several lines
        first = str(getattr(e, "msg", None) or e).strip().splitlines()[0]
        if isinstance(e, InterpolationResolutionError) and " raised while resolving interpolation: " in first:
            raise ConfigError(first.split("resolving interpolation: ", 1)[-1]) from None  # a resolver's own message
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"config key '{key}' in {where(key)}: cannot resolve its interpolation ({first})") from None
    try:
        _walk(cfg, resolved, OmegaConf.to_container(schema, resolve=False), "")
    except ConfigError as e:
        msg = str(e)
        if msg.startswith("config key '"):
            key = msg[len("config key '"):].split("'", 1)[0]
            flag = flag_for(key.split("[", 1)[0], cfg.get("family"))
            if flag:
                raise ConfigError(msg.replace(f"'{key}'", f"'{key}' ({flag})", 1)) from None
        raise
    _check_tokenizer_channels(cfg)


def _check_tokenizer_channels(cfg: DictConfig) -> None:
    """tokenizer.channels is an argument of the pixel tokenizer only: set for another kind it would be ignored."""
    t = cfg.get("tokenizer")
    ch = t.get("channels") if t is not None else None
    if ch is None:
        return
    if t.get("kind") != "pixels":
        raise ConfigError(f"config key 'tokenizer.channels' applies to tokenizer.kind=pixels only, "
                          f"not {t.get('kind')!r}; remove it")
    if isinstance(ch, bool) or not isinstance(ch, int) or ch < 1:
        raise ConfigError(f"config key 'tokenizer.channels' must be an integer >= 1, got {ch!r}")


def _walk(cfg: DictConfig, node: dict, dflt: dict, prefix: str) -> None:
    for k, v in node.items():
        key = f"{prefix}{k}"
        if key.startswith("model.") or not isinstance(dflt, dict) or k not in dflt:
            continue
        d = dflt[k]
        if isinstance(d, dict):
            if not isinstance(v, dict):
                raise ConfigError(f"config key '{key}' is a section ({', '.join(d)}), got {v!r}")
            _walk(cfg, v, d, key + ".")
            continue
        new = _coerce(key, v, d)
        if key in CHOICES and new is not None and str(new) not in _choices(key) and not (
                key == "device" and str(new).startswith("cuda:") and str(new)[5:].isdigit()):
            raise ConfigError(f"config key '{key}' must be one of {', '.join(_choices(key))}"
                              f"{' (or cuda:N)' if key == 'device' else ''}, got {new!r}")
        if key in RANGES and new is not None:
            test, what = RANGES[key]
            if not test(new):
                raise ConfigError(f"config key '{key}' must be {what}, got {new!r}")
        if type(new) is not type(v) or new != v:
            OmegaConf.update(cfg, key, new, force_add=True)


# ----------------------------------------------------------------------------------------------------- loading
def load_config(path: str | os.PathLike | None, overrides: list[str] = (), flags: dict | None = None,
                environ: dict | None = None, mode: str | None = None) -> DictConfig:
    """The resolved config of a recipe (None: base + family defaults), official flags already turned into keys
    ({key: value}), `key=value` overrides, and (when given) the environment of the official commands. With the run
    `mode`, the family derives its keys (Family.derive_config) and they are checked like the others. The result is
    in struct mode: reading an undeclared key raises (see undeclared_key_error)."""
    base = _load_yaml(BASE, "base config")
    recipe = _load_yaml(Path(path), "config file") if path is not None else None
    dotted = {**(flags or {}), **_overrides(overrides)}
    family = _family_of(recipe, dotted, base)
    schema, _ = family_schema(family)
    cfg = schema
    if recipe is not None:
        _check_known(recipe, schema, str(path), family)
        cfg = OmegaConf.merge(cfg, recipe)
    env = {k: v for k, v in (env_flags(environ) if environ is not None else {}).items()
           if OmegaConf.select(schema, k, default="<missing>") != "<missing>"}
    for k, v in {**env, **dotted}.items():
        node = OmegaConf.create()
        OmegaConf.update(node, k, v, force_add=True)
        _check_known(node, schema, "command line", family)
        OmegaConf.update(cfg, k, v, force_add=True)
    cfg.family = family

    def where(key: str) -> str:
        if key in dotted:
            return "the command line"
        node = OmegaConf.to_container(recipe, resolve=False) if recipe is not None else {}
        for part in key.split("."):
            node = node.get(part, {}) if isinstance(node, dict) else {}
        if node != {}:
            return str(path)
        return f"configs/base.yaml or the config of family '{family}'"
    validate(cfg, schema, where)
    if mode is not None:
        from models import get_family
        derive = get_family(family).derive_config
        if derive is not None:
            derive(cfg, mode)
            validate(cfg, schema, where)
    OmegaConf.set_struct(cfg, True)
    return cfg


def command_family(config: str | None, argv: list[str]) -> str:
    """The family a command line runs: a `family=` override, else the recipe's, else the base default."""
    base = _load_yaml(BASE, "base config")
    recipe = _load_yaml(Path(config), "config file") if config is not None else None
    return _family_of(recipe, _overrides([a for a in argv if "=" in a and not a.startswith("--")]), base)


def parse_command_line(config: str | None, argv: list[str], environ=None, mode=None) -> tuple[DictConfig, dict]:
    """train.py's arguments after --config/--mode -> (config, the official flags found as {key: value}). mode: the
    run mode, or a function (family, flags) -> run mode (for commands whose flags select it); None: no keys derived."""
    family = command_family(config, argv)
    _, table = family_schema(family)
    flags, rest = split_official_flags(argv, table)
    stray = [a for a in rest if a.startswith("--")]
    if stray:
        near = difflib.get_close_matches(stray[0].split("=")[0], list(table), n=1)
        hint = f"; did you mean {near[0]}?" if near else ""
        raise ConfigError(f"unknown flag {stray[0]} for family '{family}'{hint} (official flags: "
                          f"{' '.join(sorted(table))}; other settings as key=value)")
    if callable(mode):
        mode = mode(family, flags)
    return load_config(config, rest, flags, environ=os.environ if environ is None else environ, mode=mode), flags


def to_yaml(cfg: DictConfig) -> str:
    return OmegaConf.to_yaml(cfg, resolve=True)


def to_container(cfg) -> dict:
    return OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, (DictConfig, ListConfig)) else cfg


def from_container(d: dict) -> DictConfig:
    return OmegaConf.create(d)
