"""From a config to images: generator weights, tokenizer, strategy, and `generate_images` where sample i
depends only on (seed, i) — the same pixels come out on 1 or N processes and in any batch composition."""
from __future__ import annotations

import math
from pathlib import Path

import torch

from engine import checkpoint as ck
from engine.logging import logger
from models import build_model


def sample_generators(seed: int, indices) -> list[torch.Generator]:
    return [torch.Generator().manual_seed(int(seed) * 1_000_003 + int(i)) for i in indices]


def load_weights(model, cfg, fam_name: str, source=None, prefer_ema: bool = True) -> str:
    """Weights from eval.pretrained_path (ours or official) or the latest checkpoint in output_dir."""
    path = source or cfg.eval.pretrained_path
    if path is None:
        path = ck.latest_checkpoint(Path(cfg.output_dir) / "checkpoints")
        if path is None:
            raise FileNotFoundError(f"no checkpoint in {Path(cfg.output_dir) / 'checkpoints'} and "
                                    f"eval.pretrained_path (--pretrained_path) is not set")
    obj = ck.load_file(path)
    if isinstance(obj, dict):
        ck.check_family(obj, fam_name, cfg.model.flavour, path)
    sd = ck.extract_state_dict(obj, prefer_ema=prefer_ema, source=str(path))
    ck.load_strict(model, sd, str(path))
    return str(path)


def build_generator(cfg, device, source=None):
    model, fam = build_model(cfg)
    where = load_weights(model, cfg, fam.name, source, prefer_ema=bool(cfg.eval.use_ema))
    logger.info(f"generator weights: {where}")
    return model.to(device).eval(), fam


def build_tokenizer(cfg, device):
    t = cfg.tokenizer
    if t.kind is None:
        raise ValueError("tokenizer.kind is not set: generated tokens cannot be decoded to images")
    if t.kind == "demo_vq":
        from tokenizer.demo_vq import DemoVQTokenizer
        if t.ckpt is None:
            raise ValueError("tokenizer.ckpt is not set: give the demo_vq checkpoint (train it with "
                             "configs/demo/vq_fmnist.yaml)")
        return DemoVQTokenizer.from_checkpoint(str(t.ckpt)).to(device).eval()
    from tokenizer import build_tokenizer as _build
    return _build(t.kind, ckpt=t.ckpt).to(device).eval()


def build_strategy(cfg, family: str):
    from samplers.strategy import Strategy
    s = cfg.sample
    if str(s.strategy) == "cosine":
        return Strategy.enat_cosine(int(s.gen_steps), float(s.cfg_scale), float(s.mask_temp), float(s.samp_temp))
    return Strategy.from_yaml(s.strategy, gen_steps=int(s.gen_steps))


def strategy_uses_guidance(strategy) -> bool:
    return any(float(c) != 0.0 for c in strategy.cfg)


def make_model_fn(model, fam_name: str, cfg):
    if fam_name == "enat" and cfg.sample.reuse:
        from models.enat_reuse import ReuseModelFn
        return ReuseModelFn(model)
    return model


@torch.inference_mode()
def generate_tokens(model, fam_name, cfg, strategy, labels: torch.Tensor, indices, seed: int) -> torch.Tensor:
    from samplers.mask_predict import sample
    gens = sample_generators(seed, indices)
    fn = make_model_fn(model, fam_name, cfg)
    return sample(fn, labels, gens, seq_len=model.seq_len, codebook_size=model.codebook_size, strategy=strategy,
                  null_label=model.null_label if strategy_uses_guidance(strategy) else None,
                  rule="exact" if fam_name == "enat" else "ties")


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] float -> uint8 with rounding (the tokenizer already clamps)."""
    return ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.inference_mode()
def decode_tokens(tok, tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    return tok.decode(tokens.reshape(tokens.shape[0], *grid).to(tok.device))


def save_grid(images_u8: torch.Tensor, rows: int, path) -> None:
    """uint8 [N, C, H, W] -> one PNG with `rows` rows, written atomically."""
    import os

    from PIL import Image
    n, c, h, w = images_u8.shape
    cols = math.ceil(n / rows)
    canvas = torch.zeros(c, rows * (h + 2), cols * (w + 2), dtype=torch.uint8)
    for k in range(n):
        r, q = divmod(k, cols)
        canvas[:, r * (h + 2) + 1:r * (h + 2) + 1 + h, q * (w + 2) + 1:q * (w + 2) + 1 + w] = images_u8[k]
    arr = canvas.permute(1, 2, 0).numpy()
    img = Image.fromarray(arr[..., 0] if c == 1 else arr)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    img.save(tmp)
    os.replace(tmp, path)


def model_grid(model) -> tuple[int, int]:
    if hasattr(model, "grid"):
        return tuple(model.grid)
    s = int(math.isqrt(model.seq_len))
    return (s, s)


def sample_grid(ema, fam, cfg, device, path) -> None:
    """The periodic PNG: classes x per_class generated samples (token families) or reconstructions (tokenizers)."""
    from engine import dist
    if not dist.is_main():
        return
    was = ema.training
    ema.eval()
    if fam.data == "images":
        from engine.data import build_dataset
        ds = build_dataset(cfg, split="test")
        idx = torch.arange(min(len(ds), int(cfg.sample.grid_classes) * int(cfg.sample.grid_per_class)))
        x = ds.get_batch(idx)["image"].to(device)
        with torch.inference_mode():
            rec = ema(x)[0]
        save_grid(to_uint8(torch.cat([x, rec], 0)), 2 * int(cfg.sample.grid_classes), path)
    else:
        tok = build_tokenizer(cfg, device)
        k, per = int(cfg.sample.grid_classes), int(cfg.sample.grid_per_class)
        labels = torch.arange(k).repeat_interleave(per).to(device)
        strategy = build_strategy(cfg, fam.name)
        toks = generate_tokens(ema, fam.name, cfg, strategy, labels, range(len(labels)), int(cfg.seed) + 12345)
        save_grid(to_uint8(decode_tokens(tok, toks, model_grid(ema))).cpu(), k, path)
    ema.train(was)
    logger.info(f"wrote {path}")
