"""DC-AE (`diffusers.AutoencoderDC`), the continuous f32c32 tokenizer of NiT, loaded from a local directory only.

encode: `ae.encode(x).latent * scaling_factor` (deterministic, images in [-1, 1]);
decode: `ae.decode(z / scaling_factor).sample`, optionally one image at a time, which bounds peak memory at high
resolution (done here rather than through `enable_slicing()`, which some diffusers releases break for this class).
"""
from __future__ import annotations

import json
import os

import torch

from tokenizer.base import Tokenizer

DEFAULT_DCAE_DIR = os.path.join("assets", "dc-ae-f32c32-sana-1.1-diffusers")
DCAE_SCALING_FACTOR = 0.41407
DCAE_HELP = ("put the diffusers folder of mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers (config.json and "
             "diffusion_pytorch_model.safetensors) there, e.g. `huggingface-cli download "
             "mit-han-lab/dc-ae-f32c32-sana-1.1-diffusers --local-dir assets/dc-ae-f32c32-sana-1.1-diffusers`; "
             "nothing is downloaded at run time")


_BLOCKS = ("ResBlock", "ResBlock", "ResBlock", "EfficientViTBlock", "EfficientViTBlock", "EfficientViTBlock")
_MULTI = ((), (), (), (5,), (5,), (5,))
# the f32c32 architecture shrunk to 177,763 parameters, for tests and benchmarks (random weights, no download)
TINY_DCAE_CONFIG = dict(
    in_channels=3, latent_channels=32, attention_head_dim=8, encoder_block_types=_BLOCKS, decoder_block_types=_BLOCKS,
    encoder_block_out_channels=(8, 8, 16, 16, 32, 32), decoder_block_out_channels=(8, 8, 16, 16, 32, 32),
    encoder_layers_per_block=(1,) * 6, decoder_layers_per_block=(1,) * 6, encoder_qkv_multiscales=_MULTI,
    decoder_qkv_multiscales=_MULTI, upsample_block_type="interpolate", downsample_block_type="Conv",
    decoder_norm_types="rms_norm", decoder_act_fns="silu", scaling_factor=DCAE_SCALING_FACTOR)


def build_tiny_autoencoder_dc():
    return _autoencoder_dc_class()(**TINY_DCAE_CONFIG)


def _autoencoder_dc_class():
    try:
        from diffusers import AutoencoderDC
    except ImportError as e:  # AutoencoderDC appeared in diffusers 0.32
        raise ImportError("DC-AE needs diffusers>=0.32 (AutoencoderDC); install it with pip") from e
    return AutoencoderDC


def load_dcae_config(local_dir: str = DEFAULT_DCAE_DIR) -> dict:
    """config.json of a local diffusers AutoencoderDC folder (clear error when it is missing)."""
    path = os.path.join(local_dir, "config.json")
    if not os.path.isfile(path):
        where = f"DC-AE directory not found: {local_dir}" if not os.path.isdir(local_dir) else f"{path} not found"
        raise FileNotFoundError(f"{where}; {DCAE_HELP}")
    try:
        with open(path) as f:
            cfg = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable diffusers config.json ({type(e).__name__}: {e}); "
                         f"{DCAE_HELP}") from None
    if not isinstance(cfg, dict) or "latent_channels" not in cfg:
        raise ValueError(f"{path}: not an AutoencoderDC config (no 'latent_channels'); {DCAE_HELP}")
    return cfg


DCAE_WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")


def load_autoencoder_dc(local_dir: str = DEFAULT_DCAE_DIR, dtype: torch.dtype = torch.float32):
    """AutoencoderDC from a local diffusers folder only (local_files_only: never a download)."""
    load_dcae_config(local_dir)
    if not any(os.path.isfile(os.path.join(local_dir, f)) for f in DCAE_WEIGHT_FILES):
        raise FileNotFoundError(f"{local_dir} has config.json but no weights ({' or '.join(DCAE_WEIGHT_FILES)}); "
                                f"{DCAE_HELP}")
    cls = _autoencoder_dc_class()
    try:
        # low_cpu_mem_usage (needs accelerate): the weights go straight into an empty model, not over a random one
        return cls.from_pretrained(local_dir, local_files_only=True, torch_dtype=dtype, low_cpu_mem_usage=True)
    except (OSError, ValueError, RuntimeError, KeyError) as e:  # truncated or foreign weights: one line, the folder
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(f"{local_dir}: cannot load AutoencoderDC weights ({type(e).__name__}: {first[:300]}); "
                         f"{DCAE_HELP}") from None


class DCAETokenizer(Tokenizer):
    kind = "continuous"
    # the released f32c32's geometry, readable without building one (config checks); an instance takes its own from
    # the autoencoder's config
    downsample = 32
    latent_channels = 32

    def __init__(self, ae, scaling_factor: float | None = None, decode_one_by_one: bool = False):
        super().__init__()
        self.ae = ae
        cfg = ae.config
        sf = scaling_factor if scaling_factor is not None else getattr(cfg, "scaling_factor", None)
        self.scaling_factor = float(DCAE_SCALING_FACTOR if sf is None else sf)
        self.latent_channels = int(cfg.latent_channels)
        self.in_channels = int(cfg.in_channels)
        blocks = getattr(cfg, "encoder_block_out_channels", None) or cfg.block_out_channels
        self.downsample = 2 ** (len(blocks) - 1)
        self.decode_one_by_one = decode_one_by_one
        self.freeze()

    @classmethod
    def from_local_dir(cls, local_dir: str = DEFAULT_DCAE_DIR, dtype: torch.dtype = torch.float32,
                        decode_one_by_one: bool = False, device="cpu") -> "DCAETokenizer":
        return cls(load_autoencoder_dc(local_dir, dtype), decode_one_by_one=decode_one_by_one).to(device)

    def _encode(self, images):
        x = images.to(next(self.ae.parameters()).dtype)
        return self.ae.encode(x).latent * self.scaling_factor

    def _decode(self, z):
        dt = next(self.ae.parameters()).dtype
        z = z.to(dt) / self.scaling_factor
        if self.decode_one_by_one and z.shape[0] > 1:
            return torch.cat([self.ae.decode(z[i:i + 1]).sample for i in range(z.shape[0])], 0)
        return self.ae.decode(z).sample
