"""ENAT training loss: mask ratios, label dropout, reuse training through the EMA model, backward."""
import copy

import pytest
import torch
from omegaconf import OmegaConf

from models.enat.family import FAMILY, enat_training_loss, loss_hparams
from models.enat.model import FLAVOURS
from models.family import TrainContext


class Wrapped(torch.nn.Module):
    """Stands in for DDP (attributes under .module) and records every forward's inputs."""

    def __init__(self, module):
        super().__init__()
        self.module = module
        self.calls = []

    def forward(self, ids, labels, **kw):
        self.calls.append((ids.clone(), labels.clone(), kw.get("prev"), self.module.training))
        return self.module(ids, labels, **kw)


def setup(reuse_prob, per_sample=True, label_drop=0.15, seed=0, batch=12):
    torch.manual_seed(seed)
    model = FLAVOURS["debug"]()
    with torch.no_grad():  # leave adaLN-Zero so that gradients reach every block
        for blk in model.blocks:
            blk.adaLN_modulation[1].weight.normal_(0, 0.05)
    ema = Wrapped(copy.deepcopy(model).eval().requires_grad_(False))
    wrapped = Wrapped(model.train())
    cfg = OmegaConf.create({"loss": {"reuse_prob": reuse_prob, "per_sample_ratio": per_sample,
                                     "label_drop": label_drop}})
    batch = {"tokens": torch.randint(0, model.codebook_size, (batch, model.seq_len)),
             "label": torch.randint(0, model.num_classes, (batch,))}
    return model, wrapped, ema, TrainContext(cfg=cfg, step=0, ema=ema), batch


def test_reuse_training_uses_ema_state_and_trains_prev_proj():
    model, wrapped, ema, ctx, batch = setup(reuse_prob=1.0)
    loss, logs = enat_training_loss(wrapped, batch, ctx)
    loss.backward()
    assert torch.isfinite(loss) and logs["reuse"] == 1.0 and 0 < logs["loss"] < 10
    (ema_ids, ema_labels, ema_prev, ema_training), = ema.calls
    (ids, labels, prev, training), = wrapped.calls
    assert not ema_training and ema_prev is None and training
    assert torch.equal(ema_labels, labels)
    masked, ema_masked = ids == model.mask_id, ema_ids == model.mask_id
    assert torch.all(ema_masked | ~masked)                 # the EMA input masks a superset ...
    assert torch.equal(ids[~ema_masked], ema_ids[~ema_masked])
    assert (ema_masked & ~masked).any()                     # ... with some visible tokens masked further
    assert torch.equal(prev["masking"], ema_masked) and not prev["feat"].requires_grad
    assert model.prev_proj.mlp.fc1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in ema.parameters())
    assert all(p.grad is None for p in model.prev_embedder.parameters())   # kept for the layout only
    grads = [p.grad for n, p in model.named_parameters() if not n.startswith("prev_embedder")]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_plain_training_skips_reuse():
    model, wrapped, ema, ctx, batch = setup(reuse_prob=0.0)
    loss, logs = enat_training_loss(wrapped, batch, ctx)
    loss.backward()
    assert logs["reuse"] == 0.0 and not ema.calls and wrapped.calls[0][2] is None
    assert model.prev_proj.mlp.fc1.weight.grad is None
    assert model.blocks[0].attn.kv.B.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("per_sample", [True, False])
def test_mask_ratio_per_sample_or_per_batch(per_sample):
    model, wrapped, _, ctx, batch = setup(reuse_prob=0.0, per_sample=per_sample, batch=32)
    enat_training_loss(wrapped, batch, ctx)
    ids = wrapped.calls[0][0]
    counts = (ids == model.mask_id).sum(1)
    assert counts.min() >= 1 and counts.max() <= model.seq_len - 1
    assert (len(set(counts.tolist())) > 1) == per_sample
    assert 0.6 < counts.float().mean().item() / model.seq_len < 0.95   # Beta(12, 3): mean 0.8
    assert torch.equal(ids[ids != model.mask_id], batch["tokens"][ids != model.mask_id])


def test_label_drop_and_fallback_without_ema():
    model, wrapped, _, ctx, batch = setup(reuse_prob=1.0, label_drop=1.0)
    modes = []
    model.register_forward_pre_hook(lambda mod, args: modes.append(mod.training))
    loss, _ = enat_training_loss(wrapped, batch, TrainContext(cfg=ctx.cfg, step=0, ema=None))
    loss.backward()
    # without an EMA the model itself makes the previous-step state, in eval mode and without grad
    assert modes == [False, True] and model.training
    (ids, labels, prev, _), = wrapped.calls
    assert prev is not None and not prev["feat"].requires_grad
    assert torch.all(labels == model.null_label)


def test_loss_config_errors_and_family():
    with pytest.raises(ValueError, match="loss.reuse_prob"):
        loss_hparams(OmegaConf.create({"loss": {"reuse_prob": 2}}))
    with pytest.raises(ValueError, match="loss.per_sample_ratio"):
        loss_hparams({"loss": {"per_sample_ratio": "yes"}})
    assert loss_hparams(None)["reuse_prob"] == 0.5
    assert FAMILY.loss is enat_training_loss and FAMILY.training.ddp_find_unused(None)
