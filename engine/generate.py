"""From a config to images for any family: generator weights, tokenizer, the family's sampler, decoding.

Sample i depends only on (seed, i) (core.seeding.row_generators): its random draws are the same on 1 or N processes
and in any batch composition; its pixels are byte-identical at the same batch size and threads per process (matrix
products over another batch or thread count may add up differently: README, Training). What a family's `sample`
returns is handed to the tokenizer's `decode` as is.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch

from core.images import save_grid, to_uint8
from core.seeding import row_generators
from core.released import not_weights, read_released
from engine import checkpoint as ck
from engine.logging import logger
from models import build_model


def weights_path(cfg, source=None, prefer_ema: bool = True) -> str:
    """The weights file a run reads: `source`, else eval.pretrained_path (a folder through the family's
    `weights_file`, e.g. an accelerate save_state folder), else the latest checkpoint in output_dir. Reads no
    weights: the preflight calls it too."""
    path = source or cfg.eval.pretrained_path
    if path is None:
        path = ck.latest_checkpoint(Path(cfg.output_dir) / "checkpoints")
        if path is None:
            from engine.config import key_name
            raise FileNotFoundError(f"no checkpoint in {Path(cfg.output_dir) / 'checkpoints'} and "
                                    f"{key_name('eval.pretrained_path', cfg)} is not set")
    from models import get_family
    fam = get_family(cfg.family)
    if fam.sampling is not None and fam.sampling.weights_file is not None:
        path = fam.sampling.weights_file(str(path), prefer_ema)
    if Path(path).is_dir():
        raise FileNotFoundError(f"{path} is a folder; expected a weights file (family '{fam.name}' reads no "
                                f"checkpoint folders)")
    if not Path(path).is_file():
        raise FileNotFoundError(f"not found: {path} (expected a weights-only torch checkpoint)")
    return str(path)


def file_id(path) -> list | None:
    """What identifies a weights file's content cheaply: its path, size and modification time."""
    if not path or not os.path.exists(path):
        return None
    st = os.stat(path)
    return [str(Path(path).resolve()), st.st_size, st.st_mtime_ns]


def load_weights(model, cfg, fam_name: str, source=None, prefer_ema: bool = True, mapped: bool = True) -> str:
    """Weights from eval.pretrained_path (ours or official) or the latest checkpoint in output_dir, read without
    running code of the file (core.released) and memory-mapped: only the weights in use (EMA by default) are read.
    mapped=False (a model about to be trained) copies them into the module instead of sharing the file's pages."""
    path = weights_path(cfg, source, prefer_ema)
    if str(path).endswith(".safetensors"):
        ck.load_safetensors_strict(model, path)
        return str(path)
    obj = read_released(path, "generator weights")
    if isinstance(obj, dict):
        ck.check_family(obj, fam_name, cfg.model.flavour, path)
    try:
        sd = ck.extract_state_dict(obj, prefer_ema=prefer_ema, source=str(path))
    except ck.CheckpointError as e:
        raise not_weights(path, obj, "generator weights") or e from None
    ck.load_strict(model, sd, str(path), mapped=mapped)
    return str(path)


def build_generator(cfg, device, source=None):
    """The sampling model (weights loaded, in eval, sample.compile's switches in place) and its family."""
    from engine.compile_sampling import install
    model, fam = build_model(cfg)
    where = load_weights(model, cfg, fam.name, source, prefer_ema=bool(cfg.eval.use_ema))
    logger.info(f"generator weights: {where}")
    model = model.to(device).eval()
    install(model, fam, cfg, device)
    return model, fam


def build_tokenizer(cfg, device):
    t = cfg.tokenizer
    if t.kind is None:
        raise ValueError("tokenizer.kind is not set: generated samples cannot be decoded to images")
    from tokenizer import TOKENIZERS, build_tokenizer as _build
    if t.kind not in TOKENIZERS:
        raise ValueError(f"tokenizer.kind '{t.kind}' is not one of: {', '.join(sorted(TOKENIZERS))}")
    if t.kind == "demo_vq" and t.ckpt is None:
        raise ValueError("tokenizer.ckpt is not set: give the demo_vq checkpoint (train it with "
                         "configs/demo/vq_fmnist.yaml)")
    kw = {} if t.get("channels") is None else {"channels": int(t.channels)}  # pixels only (engine.config checks)
    return _build(t.kind, ckpt=t.ckpt, **kw).to(device).eval()


@torch.no_grad()  # not inference_mode: under it autocast re-casts every weight at every step (its cache is off)
def generate(model, fam, settings, labels: torch.Tensor, indices, seed: int, size=None, generators=None):
    """(samples, labels) of these sample indices, row i from generator (seed, i) (or `generators`, one per row, when
    given: several sizes of the same indices in one batch), for the given labels. Settings that replay an official
    sampler's stream (Sampling.replays) go to Sampling.replay instead, which draws the batch (and maybe its labels)
    from that stream."""
    s = fam.sampling
    if s.replays(settings):
        return s.replay(model, labels, settings, size=size)
    gens = row_generators(seed, indices) if generators is None else generators
    return s.sample(model, labels, gens, settings, size=size), labels


@torch.inference_mode()
def decode(tok, samples: torch.Tensor, decode_batch: int = 0) -> torch.Tensor:
    """tok.decode in chunks of `decode_batch` rows (0: all at once): images in [-1, 1] on the tokenizer's device."""
    samples = samples.to(tok.device)
    if decode_batch <= 0 or samples.shape[0] <= decode_batch:
        return tok.decode(samples)
    return torch.cat([tok.decode(c) for c in samples.split(int(decode_batch))])


def sample_preview(ema, fam, cfg, device, path) -> None:
    """classes x per_class samples of the family (row c of the grid is class c), decoded by the tokenizer."""
    tok = build_tokenizer(cfg, device)
    k, per = int(cfg.sample.grid_classes), int(cfg.sample.grid_per_class)
    labels = torch.arange(k).repeat_interleave(per).to(device)
    out, _ = generate(ema, fam, fam.sampling.settings(cfg, ema), labels, range(len(labels)), int(cfg.seed) + 12345)
    save_grid(to_uint8(decode(tok, out, int(cfg.eval.decode_batch))).cpu(), k, path)


def write_preview(ema, fam, cfg, device, path) -> None:
    """The periodic PNG (rank 0): the family's own preview, or a grid of its samples."""
    from core import dist
    if not dist.is_main():
        return
    was = ema.training
    ema.eval()
    if fam.training.preview is not None:
        fam.training.preview(ema, cfg, device, path)
    else:
        sample_preview(ema, fam, cfg, device, path)
    ema.train(was)
    logger.info(f"wrote {path}")
