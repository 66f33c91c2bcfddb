"""A family's defaults as its config file states them (configs/family/<name>.yaml), for the code that also runs
without a resolved config (tests, benchmarks, the public API called directly). The YAML file is the one place a
default is written; Python reads it from there instead of keeping a second table of numbers."""
from __future__ import annotations

import copy
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


@functools.lru_cache(maxsize=None)
def _sections(name: str) -> dict:
    from omegaconf import OmegaConf

    from models import get_family
    fam = get_family(name)
    if fam.config is None:
        raise ValueError(f"family '{name}' has no config file, so it has no defaults to read")
    path = Path(fam.config)
    node = OmegaConf.load(path if path.is_absolute() else ROOT / path)
    # not resolved: interpolations (eqar's ${...}) name other sections and custom resolvers; the sections read here
    # hold plain values
    return OmegaConf.to_container(node, resolve=False)


def family_defaults(name: str, section: str) -> dict:
    """A fresh copy of section `section` of family `name`'s config file."""
    sections = _sections(str(name))
    if section not in sections:
        raise KeyError(f"configs of family '{name}' have no section '{section}'")
    return copy.deepcopy(sections[section])


def section_over_defaults(cfg, name: str, section: str) -> dict:
    """`cfg.<section>` (OmegaConf, dict or absent) over the family's defaults of that section: the keys of the
    defaults, each taken from `cfg` where it is set there (not null)."""
    given = None
    if cfg is not None:
        given = cfg.get(section, None) if hasattr(cfg, "get") else getattr(cfg, section, None)
    out = family_defaults(name, section)
    for key in out:
        if given is not None and given.get(key, None) is not None:
            out[key] = given.get(key)
    return out
