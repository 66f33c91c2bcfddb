"""Image tokenizers behind one interface (tokenizer.base.Tokenizer).

`ckpt` names the weights for every kind (a file, or the DC-AE folder); None means the default location.
build_tokenizer('vqgan_mage', ckpt='assets/vqgan_jax_strongaug.ckpt', config='mage'|'tiny', device=...)
build_tokenizer('dcae', ckpt='assets/dc-ae-f32c32-sana-1.1-diffusers', dtype=..., decode_one_by_one=..., device=...)
build_tokenizer('demo_vq', ckpt=<engine checkpoint> | state_dict=..., flavour='demo', device=..., **model_kwargs)
build_tokenizer('pixels') : the identity (pixel-space generators; channels=3 or 1 (grey), downsample 1)
build_tokenizer('column', ckpt=<official Lightning tokenizer.ckpt | eqtok train.py checkpoint>, use_ema=True)
'vqgan' is accepted as another name of 'vqgan_mage'.
"""
from __future__ import annotations

from tokenizer.base import CheckpointMismatchError, Tokenizer


def _vqgan(ckpt=None, config="mage", device="cpu"):
    from tokenizer.vqgan import DEFAULT_CKPT, VQGANTokenizer
    return VQGANTokenizer.from_checkpoint(str(ckpt or DEFAULT_CKPT), config, device)


def _dcae(ckpt=None, dtype=None, decode_one_by_one=False, device="cpu"):
    import torch

    from tokenizer.dcae import DEFAULT_DCAE_DIR, DCAETokenizer
    return DCAETokenizer.from_local_dir(str(ckpt or DEFAULT_DCAE_DIR), dtype or torch.float32,
                                         decode_one_by_one, device)


def _demo_vq(ckpt=None, state_dict=None, flavour="demo", device="cpu", key=None, **model_kwargs):
    from tokenizer.demo_vq import DemoVQTokenizer
    if (ckpt is None) == (state_dict is None):
        raise ValueError("build_tokenizer('demo_vq', ...) needs exactly one of ckpt= (a training checkpoint) "
                         "or state_dict=")
    if ckpt is not None:
        return DemoVQTokenizer.from_checkpoint(str(ckpt), key=key, **model_kwargs).to(device)
    return DemoVQTokenizer.from_state_dict(state_dict, flavour=flavour, **model_kwargs).to(device)


def _pixels(ckpt=None, channels=None, device="cpu"):
    from tokenizer.pixels import PixelTokenizer
    if ckpt is not None:
        raise ValueError(f"the pixel tokenizer has no weights; tokenizer.ckpt must be null, got {ckpt!r}")
    return PixelTokenizer(channels).to(device)


def _column(ckpt=None, use_ema=True, device="cpu"):
    from tokenizer.column_ckpt import load_column_any
    return load_column_any(ckpt, use_ema, device)


TOKENIZERS = {"vqgan_mage": _vqgan, "vqgan": _vqgan, "dcae": _dcae, "demo_vq": _demo_vq, "pixels": _pixels,
              "column": _column}


class UnknownTokenizerError(KeyError, ValueError):
    """A KeyError (as before) and a ValueError, so entry points report it as one `error:` line."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def build_tokenizer(kind: str, **kw) -> Tokenizer:
    if kind not in TOKENIZERS:
        raise UnknownTokenizerError(f"unknown tokenizer kind {kind!r} (tokenizer.kind); known: {sorted(TOKENIZERS)}")
    return TOKENIZERS[kind](**kw)


__all__ = ["Tokenizer", "CheckpointMismatchError", "TOKENIZERS", "build_tokenizer"]
