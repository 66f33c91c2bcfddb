"""engine.generate.generate under bf16 autocast casts each weight once per call, not once per sampler step: autocast
keeps its casts of parameters only outside inference mode (AutoNAT-L at batch 1 spent 28% of its time re-casting)."""
from __future__ import annotations

from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from engine.config import load_config
from engine.generate import generate
from engine.precision import autocast
from models import build_model
from tests.helpers import ROOT


class WeightCasts(TorchDispatchMode):
    def __init__(self, params):
        super().__init__()
        self.ptrs = {p.data_ptr() for p in params}
        self.count = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._to_copy.default and args[0].data_ptr() in self.ptrs:
            self.count[args[0].data_ptr()] += 1
        return func(*args, **(kwargs or {}))


def test_bf16_sampling_casts_each_weight_once():
    cfg = load_config(ROOT / "configs/debug/enat_debug.yaml", ["sample.gen_steps=4"], mode="eval")
    torch.manual_seed(0)
    model, fam = build_model(cfg)
    model.eval()
    settings = fam.sampling.settings(cfg, model)
    with autocast(torch.device("cpu"), "bf16"), WeightCasts(model.parameters()) as casts:
        generate(model, fam, settings, torch.arange(2), range(2), 0)
    # 4 steps: before, every weight was cast 4 times (one tied weight, used through a view, still is)
    assert casts.count and sum(casts.count.values()) < 2 * len(casts.count), casts.count
