"""Family `demo_vq`: the Fashion-MNIST demo's VQ autoencoder (network in tokenizer/demo_vq.py), trained by the engine
like any generator so that the demo's tokenizer comes from `train.py --config configs/demo/vq_fmnist.yaml`."""
from __future__ import annotations


import torch

from core.images import save_grid, to_uint8
from datasets.sampling import hflip_batch, row_batches
from models.family import Family, Training
from tokenizer.demo_vq import FLAVOURS, demo_vq_training_loss


def fmnist_dataset(cfg, split: str | None = None):
    d = cfg.data
    if d.kind != "fmnist":
        raise ValueError(f"family 'demo_vq' trains on Fashion-MNIST images: data.kind must be 'fmnist', got "
                         f"'{d.kind}'")
    from datasets.fmnist import FashionMNIST
    return FashionMNIST(d.path, split or d.split, size=int(d.image_size))


def fmnist_batches(ds, cfg, step: int, rank: int, world: int) -> list[dict]:
    return row_batches(ds, cfg, step, rank, world, augment=hflip_batch if cfg.data.hflip else None)


@torch.inference_mode()
def reconstruction_preview(ema, cfg, device, path) -> None:
    """Test images (upper rows) over their reconstructions (lower rows)."""
    ds = fmnist_dataset(cfg, split="test")
    k, per = int(cfg.sample.grid_classes), int(cfg.sample.grid_per_class)
    x = ds.get_batch(torch.arange(min(len(ds), k * per)))["image"].to(device)
    rec = ema(x)[0]
    save_grid(to_uint8(torch.cat([x, rec], 0)).cpu(), 2 * k, path)


FAMILY = Family(
    name="demo_vq",
    flavours=FLAVOURS,
    dataset=fmnist_dataset,
    batches=fmnist_batches,
    loss=demo_vq_training_loss,
    config="configs/family/demo_vq.yaml",
    training=Training(preview=reconstruction_preview),
)
