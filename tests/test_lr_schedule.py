"""train.lr_schedule: linear warm-up, then constant or a half cosine to lr * min_lr_ratio at train.steps."""
import math

import pytest
from omegaconf import OmegaConf

from engine.config import ConfigError, load_config
from engine.optim import lr_at


def _t(**kw):
    base = dict(lr=1.0, warmup_steps=10, steps=110, lr_schedule="constant", min_lr_ratio=0.0)
    base.update(kw)
    return OmegaConf.create(base)


def test_constant_after_warmup():
    t = _t()
    assert [lr_at(s, t) for s in (0, 4, 9, 10, 109)] == [0.1, 0.5, 1.0, 1.0, 1.0]


def test_cosine_values():
    t = _t(lr_schedule="cosine", min_lr_ratio=0.1)
    assert lr_at(0, t) == pytest.approx(0.1) and lr_at(9, t) == pytest.approx(1.0)
    # step s (0-based) trains with the LR at fraction (s + 1 - warm) / (steps - warm) of the cosine
    for s in (20, 59, 90):
        frac = (s + 1 - 10) / 100
        assert lr_at(s, t) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
    assert lr_at(109, t) == pytest.approx(0.1) and lr_at(500, t) == pytest.approx(0.1)


def test_cosine_without_warmup_starts_at_lr():
    t = _t(lr_schedule="cosine", warmup_steps=0, steps=100)
    assert lr_at(-1, t) == pytest.approx(1.0) and lr_at(49, t) == pytest.approx(0.5)


def test_bad_schedule_is_refused():
    with pytest.raises(ConfigError, match="train.lr_schedule"):
        load_config("configs/debug/nat_synthetic.yaml", ["train.lr_schedule=linear"])
    with pytest.raises(ConfigError, match="train.min_lr_ratio"):
        load_config("configs/debug/nat_synthetic.yaml", ["train.min_lr_ratio=2"])
