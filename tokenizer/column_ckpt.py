"""Which file is a column tokenizer: the released Lightning `tokenizer.ckpt` ({'state_dict': live + ema_* + loss.*})
or a train.py checkpoint of family `eqtok` ({'model', 'ema', 'family': 'eqtok', 'config', ...}); both become a
ColumnTokenizer with EMA weights by default (what the release decodes with)."""
from __future__ import annotations

import inspect
import logging
import os

import torch

from core.loading import load_strict
from core.released import not_weights, read_released
from tokenizer.column import (COLUMN_CONFIGS, DEFAULT_CKPT, VAE_NORM, ColumnAutoencoder, ColumnTokenizer,
                              WEIGHTS_HELP, build_column_autoencoder, module_state_from_lightning)

log = logging.getLogger(__name__)
AE_ARGS = tuple(p for p in inspect.signature(ColumnAutoencoder.__init__).parameters if p != "self")
LOSS_PREFIX = "loss."  # eqtok keeps its training-only parts (logvar, discriminator) under loss.*, as Lightning


def autoencoder_config(model_cfg: dict) -> dict:
    """ColumnAutoencoder arguments of an eqtok `model:` section (flavour = a COLUMN_CONFIGS name + overrides)."""
    flavour = model_cfg.get("flavour", "official")
    if flavour not in COLUMN_CONFIGS:
        raise ValueError(f"column tokenizer flavour {flavour!r} is not one of {sorted(COLUMN_CONFIGS)}")
    return {**COLUMN_CONFIGS[flavour], **{k: v for k, v in model_cfg.items() if k in AE_ARGS}}


def autoencoder_state(sd: dict) -> dict:
    return {k: v for k, v in sd.items() if not k.startswith(LOSS_PREFIX)}


def load_column_any(path=None, use_ema: bool = True, device="cpu") -> ColumnTokenizer:
    path = str(path or DEFAULT_CKPT)
    try:
        obj = read_released(path, "column tokenizer checkpoint")
    except FileNotFoundError:
        raise FileNotFoundError(f"column tokenizer checkpoint not found: {path}; {WEIGHTS_HELP} (or train one with "
                                f"configs/eqtok_stage1.yaml)") from None
    if isinstance(obj, dict) and obj.get("family") == "eqtok":
        cfg = obj.get("config") or {}
        model = ColumnAutoencoder(**autoencoder_config(cfg.get("model", {})))
        which = "ema" if use_ema and "ema" in obj else "model"
        load_strict(model, autoencoder_state(obj[which]), f"{path} ({which})", mapped=True)
        vae_norm = float((cfg.get("tokenizer") or {}).get("vae_norm") or VAE_NORM)
        log.info("column tokenizer: eqtok checkpoint %s (%s weights, step %s)", path, which, obj.get("step"))
        return ColumnTokenizer(model, vae_norm).to(device)
    if isinstance(obj, dict) and "family" in obj:
        raise ValueError(f"{path} is a '{obj['family']}' checkpoint, not a column tokenizer (family eqtok)")
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise not_weights(path, obj, "column tokenizer checkpoint") or \
            ValueError(f"{path}: neither a Lightning column tokenizer ({{'state_dict': ...}}) nor an eqtok checkpoint")
    config = lightning_config(sd)
    model = build_column_autoencoder(config)
    load_strict(model, module_state_from_lightning(sd, model, use_ema, path), path, mapped=True)
    log.info("column tokenizer: Lightning checkpoint %s (%s size, %s weights)", path, config,
             "EMA" if use_ema else "live")
    return ColumnTokenizer(model).to(device)


def column_geometry(path=None) -> dict:
    """{'height', 'downsample' (the column width), 'embed_dim' (token width)} of a column tokenizer file, read without
    loading its weights (memory-mapped: the eqtok config or the Lightning tensors' shapes decide), so that a run can
    check its settings against the tokenizer before anything large is read. Unreadable files and Lightning files that
    fit no known size raise the one-line errors of the full load."""
    path = str(path or DEFAULT_CKPT)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"column tokenizer checkpoint not found: {path} (tokenizer.ckpt); {WEIGHTS_HELP} (or "
                                f"train one with configs/eqtok_stage1.yaml)")
    # memory-mapped, a released Lightning file's classes inert; the load proper logs them (into the run's log)
    obj = read_released(path, "column tokenizer checkpoint", log=False)
    if isinstance(obj, dict) and obj.get("family") == "eqtok":
        config = autoencoder_config((obj.get("config") or {}).get("model", {}))
        which = "ema" if "ema" in obj else "model"
        with torch.device("meta"):
            model = ColumnAutoencoder(**config)
        load_strict_shapes(model, autoencoder_state(obj.get(which) or {}), f"{path} ({which})")
    elif isinstance(obj, dict) and "family" in obj:
        raise ValueError(f"{path} is a '{obj['family']}' checkpoint, not a column tokenizer (family eqtok)")
    else:
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
        if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
            raise ValueError(f"{path}: neither a Lightning column tokenizer ({{'state_dict': ...}}) nor an eqtok "
                             f"checkpoint")
        name = lightning_config(sd)
        with torch.device("meta"):  # a file of no known size: the strict load's one line names what differs
            model = build_column_autoencoder(name)
        load_strict_shapes(model, module_state_from_lightning(sd, model, True, path), path)
        config = COLUMN_CONFIGS[name]
    return {"height": int(config["resolution"]), "downsample": 2 ** (len(config["ch_mult"]) - 1),
            "embed_dim": int(config["embed_dim"])}


def load_strict_shapes(model, sd: dict, source: str) -> None:
    """The key and shape checks of load_strict, without copying anything (model may live on the meta device)."""
    from core.loading import CheckpointError, mismatch
    missing, unexpected, shapes = mismatch(model, sd)
    if missing or unexpected or shapes:
        parts = [f"{len(v)} {t}: {', '.join(v[:3])}" for t, v in
                 (("missing key(s)", missing), ("unexpected key(s)", unexpected), ("shape mismatch(es)", shapes)) if v]
        raise CheckpointError(f"{source} does not fit the column tokenizer: " + "; ".join(parts))


def lightning_config(sd: dict) -> str:
    """The COLUMN_CONFIGS entry whose module shapes the file's live weights have (checked on the meta device);
    'official' when none fits, so that the strict load names what differs from the release."""
    live = {k: tuple(v.shape) for k, v in sd.items() if not k.startswith(("ema_", LOSS_PREFIX))}
    for name in ["official", *[n for n in COLUMN_CONFIGS if n != "official"]]:
        with torch.device("meta"):
            own = {k: tuple(v.shape) for k, v in build_column_autoencoder(name).state_dict().items()}
        if own == live:
            return name
    return "official"
