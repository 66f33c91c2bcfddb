"""The one interface every image tokenizer of the project offers to models, samplers and scripts.

A tokenizer is frozen: it stays in eval mode (``train()`` is a no-op), its parameters need no grad, and
``encode``/``decode`` run without autograd. Images are float [B, C, H, W] in [-1, 1] on both sides.
"""
from __future__ import annotations

import abc

import torch
from torch import nn


class Tokenizer(nn.Module, abc.ABC):
    kind: str = "discrete"             # 'discrete' -> Long codes [B, h, w]; 'continuous' -> Float latents [B, c, h, w]
    codebook_size: int | None = None   # discrete only
    latent_channels: int | None = None  # continuous only
    downsample: int = 1
    in_channels: int = 3
    scaling_factor: float = 1.0

    def freeze(self) -> "Tokenizer":
        super().train(False)
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Tokenizer":
        # an engine calling model.train() on a parent module must not switch a frozen tokenizer to training
        return super().train(False)

    @property
    def device(self) -> torch.device:
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        return height // self.downsample, width // self.downsample

    def _check_images(self, images: torch.Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}.encode expects images [B, {self.in_channels}, H, W] in [-1, 1], "
                             f"got shape {tuple(images.shape)}")
        h, w = images.shape[-2:]
        if h % self.downsample or w % self.downsample:
            raise ValueError(f"{type(self).__name__}.encode needs H and W divisible by {self.downsample}, got {h}x{w}")

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        self._check_images(images)
        return self._encode(images)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self._decode(z).clamp_(-1.0, 1.0)

    @abc.abstractmethod
    def _encode(self, images: torch.Tensor) -> torch.Tensor:
        """codes or latents of images already checked by encode()"""

    @abc.abstractmethod
    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        """images (before clamping) of codes or latents"""

    def describe(self) -> dict:
        out = dict(kind=self.kind, downsample=self.downsample, in_channels=self.in_channels,
                   scaling_factor=self.scaling_factor)
        out["codebook_size" if self.kind == "discrete" else "latent_channels"] = (
            self.codebook_size if self.kind == "discrete" else self.latent_channels)
        return out


class CheckpointMismatchError(KeyError, ValueError):
    """Raised when a state dict does not match a module; the one-line message lists the offending keys.

    Also a ValueError, so entry points that report bad input as `error: ...` catch it with the other input errors.
    """

    def __str__(self) -> str:  # KeyError would repr() the message and escape its newlines
        return str(self.args[0]) if self.args else ""


def _load_failure(e: Exception, head: bytes) -> str:
    """Why torch.load(weights_only=True) refused a file, in a few words (torch's own text runs over many lines and
    suggests weights_only=False, which must not be followed for a file of unknown origin)."""
    text = str(e)
    if "Weights only load failed" in text:
        return "it holds pickled Python objects besides tensors, which a weights-only load refuses"
    if head[:2] == b"PK" or isinstance(e, EOFError) or "central directory" in text or "zip archive" in text:
        return "truncated or corrupted: not a complete torch.save file"
    if head[:1] != b"\x80":  # neither a zip archive (torch.save) nor a pickle (legacy torch.save)
        return "not a torch.save file"
    return f"{type(e).__name__}: {text.splitlines()[0] if text else ''}"


def read_weights_file(path: str, expected: str):
    """torch.load(path, weights_only=True) on the CPU; any failure becomes one ValueError line naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        with open(path, "rb") as f:
            head = f.read(4)
        raise ValueError(f"{path}: cannot be read ({_load_failure(e, head)}); expected {expected}") from None


def strip_prefixes(state_dict: dict, prefixes=("module.", "_orig_mod.")) -> dict:
    """Drop wrapper prefixes (DDP, torch.compile) that a training checkpoint may carry."""
    out = {}
    for k, v in state_dict.items():
        changed = True
        while changed:
            changed = False
            for p in prefixes:
                if k.startswith(p):
                    k, changed = k[len(p):], True
        out[k] = v
    return out


def load_strict(module: nn.Module, state_dict: dict, source: str) -> None:
    """load_state_dict(strict=True) with one error that names every missing/unexpected/mis-shaped key."""
    own = module.state_dict()
    missing = sorted(set(own) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(own))
    shapes = sorted(f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(own[k].shape)}"
                    for k in set(own) & set(state_dict)
                    if hasattr(state_dict[k], "shape") and tuple(state_dict[k].shape) != tuple(own[k].shape))
    if missing or unexpected or shapes:
        def _fmt(name, items):
            head = ", ".join(items[:8]) + (f", ... ({len(items)} in all)" if len(items) > 8 else "")
            return f"{name}: {head}"
        parts = [_fmt(n, i) for n, i in (("missing keys", missing), ("unexpected keys", unexpected),
                                          ("shape mismatches", shapes)) if i]
        raise CheckpointMismatchError(f"{source} does not match {type(module).__name__} "
                                      f"({len(own)} tensors): " + "; ".join(parts))
    module.load_state_dict(state_dict, strict=True)
