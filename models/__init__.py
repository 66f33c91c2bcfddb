"""Model families: the one table of family names -> modules (imported lazily, so using one family never imports
another). Each module defines `FAMILY = Family(...)`; `build_model(cfg)` -> (nn.Module, Family).

A family that lives outside this repository is named by its module (`family: my_pkg.my_family`, importable from
PYTHONPATH); the module must define FAMILY like the ones here.
"""
from __future__ import annotations

import difflib
import importlib
import inspect

from models.family import Family, Sampling, SearchSpace, Training, TrainContext

FAMILIES = {
    "nat": "models.nat.family",
    "enat": "models.enat.family",
    "demo_vq": "models.demo_vq.family",
    "nit": "models.nit.family",
    "eqar": "models.eqar.family",
    "eqtok": "models.eqtok.family",
}
FAMILY_NAMES = tuple(FAMILIES)


def get_family(name: str) -> Family:
    name = str(name)
    module = FAMILIES.get(name, name)
    try:
        mod = importlib.import_module(module)
    except ModuleNotFoundError as e:
        if not (e.name and module.startswith(e.name)):
            raise  # the family's module exists but one of its imports does not
        near = difflib.get_close_matches(name, FAMILY_NAMES, n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ValueError(f"unknown family '{name}' (known: {', '.join(FAMILY_NAMES)}, or an importable module "
                         f"that defines FAMILY){hint}") from None
    fam = getattr(mod, "FAMILY", None)
    if not isinstance(fam, Family):
        raise ValueError(f"family '{name}': module {module} defines no FAMILY = Family(...)")
    return fam


def model_kwargs(cfg) -> dict:
    from omegaconf import OmegaConf
    kw = OmegaConf.to_container(cfg.model, resolve=True)
    kw.pop("flavour", None)
    return kw


def build_model(cfg, fam: Family | None = None):
    fam = fam or get_family(cfg.family)
    flavour = cfg.model.flavour
    if flavour not in fam.flavours:
        near = difflib.get_close_matches(str(flavour), list(fam.flavours), n=1)
        hint = f"; did you mean '{near[0]}'?" if near else ""
        raise ValueError(f"family '{fam.name}' has no flavour '{flavour}' (known: {', '.join(fam.flavours)}){hint}")
    builder = fam.flavours[flavour]
    kw = model_kwargs(cfg)
    params = inspect.signature(builder).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
        bad = [k for k in kw if k not in params]
        if bad:
            raise ValueError(f"model.{bad[0]} is not an argument of flavour '{flavour}' of family '{fam.name}' "
                             f"(arguments: {', '.join(params)})")
    try:
        return builder(**kw), fam
    except TypeError as e:  # an override the constructor does not take
        raise ValueError(f"model settings {kw} do not fit flavour '{flavour}' of family '{fam.name}': {e}") from None


__all__ = ["Family", "SearchSpace", "TrainContext", "get_family", "build_model", "model_kwargs", "FAMILIES",
           "FAMILY_NAMES"]
