"""Model families, merged explicitly. `build_model(cfg)` -> (nn.Module, Family).

Each family module exposes FLAVOURS {name: builder(**overrides)} and a training loss; the record here tells
the engine what data the family consumes. Imports are lazy so that using one family never imports another.
"""
from __future__ import annotations

import inspect

from models.family import Family, TrainContext

FAMILY_NAMES = ("nat", "enat", "demo_vq")


def get_family(name: str) -> Family:
    if name == "nat":
        from models import nat
        return Family("nat", nat.FLAVOURS, "tokens", nat.nat_training_loss)
    if name == "enat":
        from models import enat
        return Family("enat", enat.FLAVOURS, "tokens", enat.enat_training_loss,
                      extras={"ddp_find_unused": True})
    if name == "demo_vq":
        import functools

        from tokenizer import demo_vq
        flavours = {k: functools.partial(demo_vq.build_demo_vq, k) for k in demo_vq.DEMO_VQ_FLAVOURS}
        return Family("demo_vq", flavours, "images", demo_vq.demo_vq_training_loss)
    raise ValueError(f"unknown family '{name}'; known: {', '.join(FAMILY_NAMES)}")


def model_kwargs(cfg) -> dict:
    from omegaconf import OmegaConf
    kw = OmegaConf.to_container(cfg.model, resolve=True)
    kw.pop("flavour", None)
    return kw


def build_model(cfg):
    fam = get_family(cfg.family)
    flavour = cfg.model.flavour
    if flavour not in fam.flavours:
        import difflib
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


__all__ = ["Family", "TrainContext", "get_family", "build_model", "model_kwargs", "FAMILY_NAMES"]
