"""Family `enat`: the ENAT training loss (with feature-reuse batches) and mask-predict sampling with temporal
feature reuse, over the encoder-decoder of models/enat/model.py."""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn

from models import token_family as tf
from models.family import Family, Sampling, Training, TrainContext, always
from models.family_defaults import section_over_defaults
from models.enat.model import FLAVOURS


# ---- training loss ---------------------------------------------------------------------------------------------

def loss_hparams(cfg) -> dict:
    """`cfg.loss` (OmegaConf, dict or absent) over the loss defaults of configs/family/enat.yaml, validated."""
    hp = section_over_defaults(cfg, "enat", "loss")
    ab = [float(v) for v in hp["beta_alpha_beta"]]
    if len(ab) != 2 or min(ab) <= 0:
        raise ValueError(f"config loss.beta_alpha_beta must be two positive numbers, got {hp['beta_alpha_beta']}")
    for key in ("label_drop", "reuse_prob"):
        if not 0.0 <= float(hp[key]) <= 1.0:
            raise ValueError(f"config loss.{key} must be in [0, 1], got {hp[key]}")
    if not 0.0 <= float(hp["label_smoothing"]) < 1.0:
        raise ValueError(f"config loss.label_smoothing must be in [0, 1), got {hp['label_smoothing']}")
    if not isinstance(hp["per_sample_ratio"], bool):
        raise ValueError(f"config loss.per_sample_ratio must be true or false, got {hp['per_sample_ratio']!r}")
    return {"beta_alpha_beta": tuple(ab), "label_drop": float(hp["label_drop"]),
            "label_smoothing": float(hp["label_smoothing"]), "reuse_prob": float(hp["reuse_prob"]),
            "per_sample_ratio": hp["per_sample_ratio"]}


def _lowest_ranked(n: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Bool[B, L]: n[b] positions of row b drawn uniformly among `allowed` (global torch RNG)."""
    noise = torch.rand(allowed.shape, device=allowed.device).masked_fill(~allowed, float("inf"))
    rank = noise.argsort(dim=1).argsort(dim=1)
    return (rank < n.unsqueeze(1)) & allowed


def enat_training_loss(model: nn.Module, batch: dict, ctx: TrainContext) -> tuple[torch.Tensor, dict]:
    """Masked-token CE with Beta(12, 3) mask ratios, null-label dropout and ENAT reuse training.

    Reuse training (probability loss.reuse_prob per batch): a further round(U·#visible) random visible tokens are
    masked, the EMA model (eval, no grad) runs on that input, and its state serves as `prev` for the real input,
    imitating the previous sampling step. Without an EMA in `ctx`, the model itself (eval, no grad) plays that role.
    """
    net = model.module if hasattr(model, "module") else model  # attributes only; the forward goes through `model`
    hp = loss_hparams(getattr(ctx, "cfg", None))
    tokens, labels = batch["tokens"], batch["label"]
    if tokens.dim() != 2 or tokens.shape[1] != net.seq_len:
        raise ValueError(f"batch['tokens'] must be Long[B, {net.seq_len}], got shape {list(tokens.shape)}")
    b, seq_len = tokens.shape
    dev = tokens.device
    rows = b if hp["per_sample_ratio"] else 1
    ratio = torch.distributions.Beta(*(torch.tensor(v, device=dev) for v in hp["beta_alpha_beta"])).sample((rows,))
    n_mask = torch.round(ratio * seq_len).long().clamp(1, seq_len - 1).expand(b)
    mask = _lowest_ranked(n_mask, torch.ones_like(tokens, dtype=torch.bool))
    inputs = tokens.masked_fill(mask, net.mask_id)
    drop = torch.rand(labels.shape, device=labels.device) < hp["label_drop"]
    labels = torch.where(drop, torch.full_like(labels, net.null_label), labels)

    prev = None
    reuse = bool(torch.rand(()) < hp["reuse_prob"])
    if reuse:
        u = torch.rand(rows, device=dev).expand(b)
        n_extra = torch.round(u * (seq_len - n_mask)).long()
        prev_inputs = inputs.masked_fill(_lowest_ranked(n_extra, ~mask), net.mask_id)
        teacher = ctx.ema if getattr(ctx, "ema", None) is not None else net
        was_training = teacher.training
        teacher.eval()
        try:
            with torch.no_grad():
                _, prev = teacher(prev_inputs, labels, return_state=True)
        finally:
            teacher.train(was_training)

    logits = model(inputs, labels, prev=prev)
    target = tokens.masked_fill(~mask, -100)
    loss = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100,
                           label_smoothing=hp["label_smoothing"])
    with torch.no_grad():
        acc = (((logits.argmax(-1) == tokens) & mask).sum().float() / mask.sum()).item()
    return loss, {"loss": loss.item(), "acc": acc, "mask_ratio": n_mask.float().mean().item() / seq_len,
                  "reuse": float(reuse)}


# ------------------------------------------------------------------------------------------------------ family
def enat_sample(model: nn.Module, labels: torch.Tensor, generators, settings: tf.TokenSampling,
                size=None) -> torch.Tensor:
    """Codes Long[B, h, w] by mask-predict with ENAT's rule (exactly mask_len re-masked per row), through the
    temporal feature reuse model function when settings.reuse."""
    from models.enat.reuse import ReuseModelFn
    fn = ReuseModelFn(model) if settings.reuse else model
    return tf.mask_predict_grid(fn, model, labels, generators, settings, rule="exact", size=size)


def enat_replay(model: nn.Module, labels: torch.Tensor, settings: tf.TokenSampling, size=None):
    """(codes, the given labels) from the official ENAT eval's stream (sample.rng: official), which does not draw
    the labels."""
    from models.enat.reuse import ReuseModelFn
    fn = ReuseModelFn(model) if settings.reuse else model
    return tf.mask_predict_replay(fn, model, labels, settings, rule="exact", size=size)


def enat_edit(model: nn.Module, known: torch.Tensor, keep: torch.Tensor, labels: torch.Tensor, generators,
              settings: tf.TokenSampling, size=None, tokenizer=None) -> torch.Tensor:
    """Family.edit: codes Long[B, h, w], the kept ones equal to `known` (MaskGIT editing with ENAT's rule; the kept
    codes are visible from step 0, so feature reuse starts from their encoding)."""
    from models.enat.reuse import ReuseModelFn
    fn = ReuseModelFn(model) if settings.reuse else model
    return tf.mask_predict_edit(fn, model, known, keep, labels, generators, settings, rule="exact", size=size)


def enat_sample_settings(cfg, model) -> tf.TokenSampling:
    # the official ENAT eval makes eval_n / 1000 images of every class: its labels are not random draws
    return tf.sampling_from_config(cfg, "enat", reuse=bool(cfg.sample.reuse))


# official ENAT README flags -> config keys: the NAT ones plus the architecture and reuse training
OFFICIAL_FLAGS = {
    **tf.OFFICIAL_FLAGS,
    "--enc_dec": ("model.enc_dec", 2),
    "--embed_dim": ("model.embed_dim", 1),
    "--num_heads": ("model.num_heads", 1),
    "--reuse_prob": ("loss.reuse_prob", 1),
}

FAMILY = Family(
    name="enat",
    flavours=FLAVOURS,
    config="configs/family/enat.yaml",
    loss=enat_training_loss,
    official_flags=OFFICIAL_FLAGS,
    **tf.record_fields(),
    # prev_embedder is never used and prev_proj only in reuse batches: DDP must tolerate unused parameters
    training=Training(ddp_find_unused=always),
    sampling=Sampling(sample=enat_sample, settings=enat_sample_settings, replay=enat_replay, edit=enat_edit,
                      **tf.sampling_fields()),
)
