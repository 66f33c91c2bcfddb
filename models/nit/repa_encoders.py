"""Frozen image encoders for NiT's REPA term, behind one contract: an image Float (1, 3, H, W) in [0, 1] -> its patch
features, (1, z, H/patch, W/patch) or (1, H·W/patch², z) row-major (cls/register tokens removed). models.nit.loss's
`repa_image_encoder` does the per-image flip and the resize to patch × the latent grid, then packs one feature per
token. Nothing here downloads: every kind reads local files and names the missing one.

Kinds (`loss.repa_kind`; `auto` picks from `loss.repa_encoder`):
  export  a `.pt2` (torch.export.save) or TorchScript (torch.jit.save) file: the graph ships with the file, no code is
          imported. auto: a `.pt2` file, or any other existing file that is not a RADIO `.pth.tar`
  radio   RADIO-v2.5 from its released checkpoint (auto: a `.pth.tar` file). The paper aligns NiT-B/L/XL/XXL to
          RADIO-v2.5-H (`radio_v2.5-h.pth.tar`, 1280-d features) and NiT-S to RADIO-v2.5-B (`radio_v2.5-b.pth.tar`,
          768-d), patch 16, using the final layer's spatial tokens after the final norm, without RADIO's feature
          normaliser, with RADIO's own input conditioner on [0, 1] images. The checkpoint needs RADIO's code: a local
          clone of NVlabs/RADIO (`loss.radio_repo`) is loaded with torch.hub.load(..., source='local') and given the
          checkpoint path as `version`, so nothing is fetched (RADIO's code needs timm and einops installed)
  module  "package.module:factory" (auto: not an existing file, has a colon): `factory()` returns any nn.Module or
          callable with the contract above; the hook for encoders other than RADIO
`output_features` accepts what such encoders return: a tensor, RADIO's (summary, features) pair / RadioOutput, or a
dict holding one of those under 'backbone'.
"""
from __future__ import annotations

import importlib
import os
from typing import Callable

import torch
from torch import nn

KINDS = ("auto", "export", "radio", "module")
RADIO_URL = "https://huggingface.co/nvidia/RADIO/resolve/main/{name}"
RADIO_REPO_URL = "https://github.com/NVlabs/RADIO"
# the paper's encoder per NiT size (spec: S aligns to the B-size RADIO, the rest to H)
RADIO_FOR_FLAVOUR = {"NiT_S": "radio_v2.5-b.pth.tar", "NiT_B": "radio_v2.5-h.pth.tar", "NiT_L": "radio_v2.5-h.pth.tar",
                     "NiT_XL": "radio_v2.5-h.pth.tar", "NiT_XXL": "radio_v2.5-h.pth.tar"}
RADIO_WIDTH = {"radio_v2.5-b.pth.tar": 768, "radio_v2.5-h.pth.tar": 1280}


def resolve_kind(kind: str, spec: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"loss.repa_kind must be one of {KINDS}, got {kind!r}")
    if kind != "auto":
        return kind
    if spec.endswith(".pth.tar"):
        return "radio"
    if not os.path.exists(spec) and ":" in spec and not spec.endswith(".pt2"):
        return "module"
    return "export"


def output_features(out) -> torch.Tensor:
    """The patch-feature tensor of an encoder's output (module docstring)."""
    if isinstance(out, dict):
        if "backbone" not in out:
            raise ValueError(f"REPA encoder returned a dict without 'backbone' (keys {sorted(out)})")
        out = out["backbone"]
    if hasattr(out, "features"):
        out = out.features
    elif isinstance(out, (tuple, list)):
        if len(out) != 2:
            raise ValueError(f"REPA encoder returned a {len(out)}-tuple; need features or (summary, features)")
        out = out[1]
    if not torch.is_tensor(out):
        raise ValueError(f"REPA encoder returned {type(out).__name__}; need a tensor of patch features")
    return out


class FeatureGrid(nn.Module):
    """A frozen encoder whose output is reduced to its patch-feature tensor (float32), in eval mode."""

    def __init__(self, encoder):
        super().__init__()
        self.encoder = encoder
        if isinstance(encoder, nn.Module):
            try:
                encoder.eval()
            except NotImplementedError:  # torch.export modules refuse eval(); they were exported in eval mode
                pass
            for p in encoder.parameters():
                p.requires_grad_(False)
        self.training = False

    def train(self, mode: bool = True):
        return self  # a frozen target: an engine-wide model.train() must not switch dropout/BN back on

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return output_features(self.encoder(images)).float()


def check_files(spec: str, kind: str = "auto", radio_repo: str | None = None) -> str:
    """The files the encoder named by `spec` needs, checked without reading them -> its kind; one-line errors
    naming the missing file and where to get it (a training run calls this before anything is built)."""
    spec = str(spec)
    kind = resolve_kind(kind, spec)
    if kind == "export" and not os.path.isfile(spec):
        raise FileNotFoundError(f"REPA encoder {spec} not found (loss.repa_encoder: a .pt2 (torch.export) or "
                                f"TorchScript file; loss.repa_encoder=null turns REPA off)")
    if kind == "radio":
        name = os.path.basename(spec)
        if not os.path.isfile(spec):
            want = name if name in RADIO_WIDTH else "radio_v2.5-h.pth.tar"
            raise FileNotFoundError(f"RADIO checkpoint {spec} not found (loss.repa_encoder; download {want} from "
                                    f"{RADIO_URL.format(name=want)}; loss.repa_encoder=null turns REPA off)")
        repo = radio_repo
        if repo is None or not os.path.isfile(os.path.join(str(repo), "hubconf.py")):
            where = "loss.radio_repo is not set" if repo is None else \
                f"{os.path.join(str(repo), 'hubconf.py')} not found"
            raise FileNotFoundError(f"RADIO's code is needed to read {name}: {where} (git clone {RADIO_REPO_URL} "
                                    f"and set loss.radio_repo to it, or export RADIO to a .pt2 file for "
                                    f"loss.repa_encoder)")
    return kind


def load_export(path: str, device) -> nn.Module:
    check_files(path, "export")
    if path.endswith(".pt2"):
        return torch.export.load(path).module().to(device)
    return torch.jit.load(path, map_location=device).eval()


def load_radio(checkpoint: str, repo: str | None, device) -> nn.Module:
    """RADIO from a local checkpoint through a local clone of its code (module docstring); one-line errors."""
    check_files(checkpoint, "radio", repo)
    try:
        model = torch.hub.load(str(repo), "radio_model", source="local", version=checkpoint, progress=False)
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(f"RADIO's code in {repo} needs the Python package '{e.name}' (RADIO requires "
                                  f"timm and einops: pip install timm einops)") from None
    return model.to(device)


def load_module(spec: str) -> Callable:
    mod_name, _, attr = spec.partition(":")
    try:
        factory = getattr(importlib.import_module(mod_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"REPA encoder '{spec}' (loss.repa_encoder, kind module) does not name an importable "
                         f"'package.module:factory' ({type(e).__name__}: {e})") from None
    return factory()


def build_feature_encoder(spec: str, kind: str = "auto", radio_repo: str | None = None,
                          device="cpu") -> FeatureGrid:
    """The frozen encoder named by `spec` (a file or 'package.module:factory') as a FeatureGrid on `device`."""
    spec = str(spec)
    kind = resolve_kind(kind, spec)
    if kind == "export":
        enc = load_export(spec, device)
    elif kind == "radio":
        enc = load_radio(spec, radio_repo, device)
    else:
        enc = load_module(spec)
        if isinstance(enc, nn.Module):
            enc = enc.to(device)
    return FeatureGrid(enc)
