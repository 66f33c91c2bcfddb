"""Family `nat` (NAT and AutoNAT): the masked-token training loss, mask-predict sampling, the strategy search
space and the official flags, over the U-ViT of models/nat/model.py."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models import token_family as tf
from models.family import Family, Sampling, TrainContext
from models.family_defaults import section_over_defaults
from models.nat.model import FLAVOURS


# -------------------------------------------------------------------------------------------------------------- loss
def loss_hparams(cfg) -> dict:
    """`cfg.loss` (OmegaConf, dict or absent) over the loss defaults of configs/family/nat.yaml, validated."""
    out = section_over_defaults(cfg, "nat", "loss")
    ab = [float(v) for v in out["beta_alpha_beta"]]
    if len(ab) != 2 or min(ab) <= 0:
        raise ValueError(f"config loss.beta_alpha_beta must be two positive numbers, got {out['beta_alpha_beta']}")
    if not 0.0 <= float(out["label_drop"]) <= 1.0:
        raise ValueError(f"config loss.label_drop must be in [0, 1], got {out['label_drop']}")
    if not 0.0 <= float(out["label_smoothing"]) < 1.0:
        raise ValueError(f"config loss.label_smoothing must be in [0, 1), got {out['label_smoothing']}")
    return {"beta_alpha_beta": tuple(ab), "label_drop": float(out["label_drop"]),
            "label_smoothing": float(out["label_smoothing"])}


def random_mask(batch: int, seq_len: int, alpha: float, beta: float, device) -> torch.Tensor:
    """Bool[B, L]: per row r ~ Beta(alpha, beta), round(L*r) (at least 1) positions chosen uniformly at random."""
    beta_dist = torch.distributions.Beta(torch.tensor(float(alpha), device=device),
                                         torch.tensor(float(beta), device=device))
    ratio = beta_dist.sample((batch,))
    n_mask = torch.round(ratio * seq_len).long().clamp(1, seq_len)
    # rank of each position in a random permutation: the first n_mask ranks get masked
    rank = torch.rand(batch, seq_len, device=device).argsort(dim=1).argsort(dim=1)
    return rank < n_mask[:, None]


def nat_training_loss(model: nn.Module, batch: dict, ctx: TrainContext) -> tuple[torch.Tensor, dict]:
    """Masked-token CE (masked positions only, label smoothing) with Beta mask ratios and null-label dropout.

    Randomness comes from the global torch RNG (seeded per step and rank by the engine).
    """
    net = model.module if hasattr(model, "module") else model  # attributes only; the forward goes through `model`
    hp = loss_hparams(getattr(ctx, "cfg", None))
    tokens, labels = batch["tokens"], batch["label"]
    if tokens.dim() != 2:
        raise ValueError(f"batch['tokens'] must be Long[B, L], got shape {list(tokens.shape)}")
    b, seq_len = tokens.shape
    mask = random_mask(b, seq_len, *hp["beta_alpha_beta"], device=tokens.device)
    inputs = tokens.masked_fill(mask, net.mask_id)
    drop = torch.rand(b, device=labels.device) < hp["label_drop"]
    labels = torch.where(drop, torch.full_like(labels, net.null_label), labels)

    logits = model(inputs, labels)
    # ignore_index keeps shapes static (no boolean gather, no host sync before backward)
    target = tokens.masked_fill(~mask, -100)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                           label_smoothing=hp["label_smoothing"])
    with torch.no_grad():
        hit = ((logits.argmax(-1) == tokens) & mask).sum()
        acc = (hit.float() / mask.sum()).item()
    return loss, {"loss": loss.item(), "acc": acc}


# ------------------------------------------------------------------------------------------------------ family
def nat_sample(model: nn.Module, labels: torch.Tensor, generators, settings, size=None):
    """Codes Long[B, h, w] by mask-predict with AutoNAT's rule (re-mask every confidence <= the cutoff).
    `settings`: TokenSampling (or a bare Strategy, from the search)."""
    return tf.mask_predict_grid(model, model, labels, generators, settings, rule="ties", size=size)


def nat_replay(model: nn.Module, labels: torch.Tensor, settings, size=None):
    """(codes, labels) of the official AutoNAT eval's stream, which draws the labels too (sample.rng: official)."""
    return tf.mask_predict_replay(model, model, labels, settings, rule="ties", size=size)


def nat_edit(model: nn.Module, known: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor, generators, settings,
             size=None, tokenizer=None):
    """Family.edit: codes Long[B, h, w], the kept ones equal to `known` (MaskGIT editing, AutoNAT's rule)."""
    return tf.mask_predict_edit(model, model, known, keep, labels, generators, settings, rule="ties", size=size)


def nat_sample_settings(cfg, model):
    # the official AutoNAT eval draws its labels from the same torch generator as the tokens
    return tf.sampling_from_config(cfg, "nat", stream_labels=True)


def nat_search_space(cfg):
    """AutoNAT's strategy search: the 4T-2 strategy scalars, starting at search.init."""
    from samplers.strategy_search import StrategySpace
    return StrategySpace(initial_strategy(cfg), fd_step_ratio=cfg.search.fd_step_ratio,
                         fd_step_other=cfg.search.fd_step_other, lr_ratio=cfg.search.lr_ratio,
                         lr_other=cfg.search.lr_other)


def initial_strategy(cfg):
    """search.init: auto (sample.strategy when it is a YAML file, else maskgit) | maskgit | sample | <file.yaml>."""
    from samplers.strategy import Strategy
    init, steps = str(cfg.search.init), int(cfg.sample.gen_steps)
    if init == "auto":
        init = "maskgit" if str(cfg.sample.strategy) == "cosine" else "sample"
    if init == "maskgit":
        return Strategy.maskgit_init(steps)
    if init == "sample":
        return tf.strategy_from_config(cfg).validate(steps)
    return Strategy.from_yaml(init, gen_steps=steps)


# official AutoNAT README flags -> config keys: the NAT ones plus the search's
OFFICIAL_FLAGS = {
    **tf.OFFICIAL_FLAGS,
    "--max_upd": ("search.max_upd", 1),
    "--clip_grad": ("search.clip_grad", 1),
    "--sche_lr": ("search.lr_ratio", 1),
    "--unb_lr": ("search.lr_other", 1),
    "--grad_estimate_step_size": ("search.fd_step_ratio", 1),
    "--unb_grad_estimate_step_size": ("search.fd_step_other", 1),
    "--sche_moment": ("search.momentum", 1),
}

FAMILY = Family(
    name="nat",
    flavours=FLAVOURS,
    config="configs/family/nat.yaml",
    loss=nat_training_loss,
    official_flags=OFFICIAL_FLAGS,
    **tf.record_fields(),
    sampling=Sampling(
        sample=nat_sample,
        settings=nat_sample_settings,
        replay=nat_replay,
        search_space=nat_search_space,
        edit=nat_edit,
        **tf.sampling_fields(),
    ),
)
