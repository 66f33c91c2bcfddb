import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf
from torch import nn

from models.family import TrainContext
from models.nat.model import FLAVOURS
from models.nat.family import loss_hparams, nat_training_loss




class Recorder(nn.Module):
    """Logits from a learnable table indexed by the input id; remembers the inputs it was given."""

    def __init__(self, codebook_size=6, num_classes=4):
        super().__init__()
        self.mask_id, self.null_label = codebook_size, num_classes - 1
        self.table = nn.Parameter(torch.randn(codebook_size + 1, codebook_size))
        self.calls = []

    def forward(self, ids, labels):
        self.calls.append((ids.clone(), labels.clone()))
        return self.table[ids] + 0.1 * labels[:, None, None]


class Wrapped(nn.Module):  # what DDP looks like from the loss: attributes live on .module
    def __init__(self, inner):
        super().__init__()
        self.module = inner

    def forward(self, *args):
        return self.module(*args)


def _batch(b=8, seq_len=12, v=6, classes=3):
    return {"tokens": torch.randint(0, v, (b, seq_len)), "label": torch.randint(0, classes, (b,))}


def test_ce_on_masked_positions_only_with_label_smoothing():
    torch.manual_seed(0)
    model, batch = Recorder(), _batch()
    torch.manual_seed(10)
    loss, logs = nat_training_loss(model, batch, TrainContext(cfg=None))
    ids, labels = model.calls[-1]
    mask = ids == model.mask_id
    assert mask.any() and (~mask).any()
    assert torch.equal(ids[~mask], batch["tokens"][~mask])  # visible tokens pass through untouched
    logits = model(ids, labels)
    expected = F.cross_entropy(logits[mask], batch["tokens"][mask], label_smoothing=0.1)
    torch.testing.assert_close(loss, expected)
    acc = (logits[mask].argmax(-1) == batch["tokens"][mask]).float().mean().item()
    assert logs["acc"] == pytest.approx(acc) and logs["loss"] == pytest.approx(loss.item())
    # changing the logits at visible positions must not change the loss
    model2 = Recorder()
    model2.load_state_dict(model.state_dict())
    model2.table.data[: model.mask_id] += 100.0 * torch.randn(model.mask_id, 6)  # only ids 0..5 = visible inputs
    torch.manual_seed(10)
    loss2, _ = nat_training_loss(model2, batch, TrainContext(cfg=None))
    torch.testing.assert_close(loss2, loss)


def test_label_smoothing_and_hparams_come_from_cfg():
    cfg = OmegaConf.create({"loss": {"label_smoothing": 0.0, "label_drop": 0.0, "beta_alpha_beta": [2, 2]}})
    assert loss_hparams(cfg) == {"beta_alpha_beta": (2.0, 2.0), "label_drop": 0.0, "label_smoothing": 0.0}
    assert loss_hparams(None) == {"beta_alpha_beta": (12.0, 3.0), "label_drop": 0.15, "label_smoothing": 0.1}
    torch.manual_seed(1)
    model, batch = Recorder(), _batch()
    loss, _ = nat_training_loss(model, batch, TrainContext(cfg=cfg))
    ids, labels = model.calls[-1]
    assert torch.equal(labels, batch["label"])  # label_drop 0
    mask = ids == model.mask_id
    torch.testing.assert_close(loss, F.cross_entropy(model(ids, labels)[mask], batch["tokens"][mask]))
    with pytest.raises(ValueError, match="loss.label_drop"):
        loss_hparams(OmegaConf.create({"loss": {"label_drop": 1.5}}))
    with pytest.raises(ValueError, match="beta_alpha_beta"):
        loss_hparams({"loss": {"beta_alpha_beta": [12]}})


def test_mask_ratio_and_null_label_statistics():
    torch.manual_seed(2)
    model = Recorder(num_classes=6)
    batch = _batch(b=6000, seq_len=20, classes=5)
    nat_training_loss(Wrapped(model), batch, TrainContext(cfg=None))
    ids, labels = model.calls[-1]
    dropped = labels == model.null_label
    assert abs(dropped.float().mean().item() - 0.15) < 0.015
    assert torch.equal(labels[~dropped], batch["label"][~dropped])
    n_masked = (ids == model.mask_id).sum(1).float()
    assert n_masked.min() >= 1
    assert abs(n_masked.mean().item() / 20 - 0.8) < 0.01  # Beta(12, 3) mean
    assert abs(n_masked.std().item() / 20 - 0.1) < 0.015  # Beta(12, 3) sd 0.1 plus rounding
    # every position is equally likely to be masked
    per_position = (ids == model.mask_id).float().mean(0)
    assert (per_position - 0.8).abs().max() < 0.03


def test_backward_through_the_network_and_global_rng_determinism():
    cfg = OmegaConf.create({"loss": {"label_drop": 0.5}})
    batch = {"tokens": torch.randint(0, 16, (4, 16)), "label": torch.randint(0, 10, (4,))}
    torch.manual_seed(3)
    model = FLAVOURS["debug"]()
    torch.manual_seed(4)
    loss, logs = nat_training_loss(model, batch, TrainContext(cfg=cfg))
    loss.backward()
    assert torch.isfinite(loss) and 0.0 <= logs["acc"] <= 1.0
    assert model.in_blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.context_embed.word_embeddings.weight.grad.abs().sum() > 0
    torch.manual_seed(4)
    again, _ = nat_training_loss(model, batch, TrainContext(cfg=cfg))
    assert again.item() == loss.item()
