"""The equivariant AR's fast sampling path (models/eqar/kv_cache.py + head_loop.py, `fast_path`, the default) gives
the module path's latents bit for bit (fp32 and bf16 autocast, guided or not, any window, runs longer than the
preallocated cache), writes its KV cache in place, and the batched-modulation head stays within float tolerance."""
import pytest
import torch

from core.seeding import row_generators
from models.eqar import kv_cache
from models.eqar.condition import EqarCondition, sample
from models.eqar.family import eqar_sample, eqar_sample_settings
from models.eqar.head_loop import HeadEuler
from models.eqar.model import FLAVOURS
from samplers.column_ar import euler_flow


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    model = FLAVOURS["debug"](**kw).eval()
    with torch.no_grad():  # the released init zeroes the head output; randomise so samples depend on everything
        for p in model.diffloss.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("cfg,schedule,window", [(1.0, "linear", 3), (3.0, "linear", 3), (2.0, "constant", 0),
                                                 (4.0, "linear", 5)])
def test_fast_path_is_bit_identical_to_the_module_path(monkeypatch, cfg, schedule, window):
    monkeypatch.setattr(kv_cache, "SPARE_SLOTS", 2)  # capacity 2w + 2: 23 tokens move the window several times
    model = _model(cond_length=window)
    labels = torch.tensor([1, 5, 8])
    kw = dict(num_tokens=23, num_steps=4, cfg=cfg, cfg_schedule=schedule)
    fast = sample(model, labels, row_generators(0, range(3)), **kw)
    ref = sample(model, labels, row_generators(0, range(3)), fast_path=False, **kw)
    assert fast.shape == (3, 23, 16) and torch.isfinite(fast).all()
    assert torch.equal(fast, ref)
    full = sample(model, labels, row_generators(0, range(3)), fast_path=False, use_cache=False, **kw)
    assert torch.allclose(fast, full, atol=1e-4)  # and still the recomputed sequence


def test_fast_path_bit_identical_under_bf16_autocast():
    model = _model(1)
    labels = torch.tensor([2, 7])
    kw = dict(num_tokens=6, num_steps=3, cfg=2.5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        fast = sample(model, labels, row_generators(3, range(2)), **kw)
        ref = sample(model, labels, row_generators(3, range(2)), fast_path=False, **kw)
    assert torch.equal(fast, ref)


@pytest.mark.parametrize("scale", [None, 3.0])
def test_head_loop_equals_euler_flow_of_the_head(scale):
    head = _model(2).diffloss.net
    g = torch.Generator().manual_seed(0)
    b = 3
    z = torch.randn(2 * b if scale else b, 32, generator=g)
    noise = torch.randn(b, 16, generator=g)
    with torch.no_grad():
        want = euler_flow(head, z, noise, 7, scale)
        got = HeadEuler(head, b, 7, scale is not None, "cpu")(z, noise, scale)
        batched = HeadEuler(head, b, 7, scale is not None, "cpu", batched=True)(z, noise, scale)
        with pytest.raises(ValueError, match="guided"):
            HeadEuler(head, b, 7, scale is None, "cpu")(z, noise, scale)
    assert torch.equal(got, want)
    assert torch.allclose(batched, want, atol=1e-5)


def test_batched_head_within_tolerance_of_the_module_path():
    model = _model(3)
    labels = torch.tensor([0, 4, 9, 2])
    kw = dict(num_tokens=8, num_steps=5, cfg=3.0)
    batched = sample(model, labels, row_generators(1, range(4)), batched_head=True, **kw)
    ref = sample(model, labels, row_generators(1, range(4)), fast_path=False, **kw)
    assert torch.allclose(batched, ref, atol=1e-5)
    with pytest.raises(ValueError, match="batched_head"):
        sample(model, labels, row_generators(1, range(4)), fast_path=False, batched_head=True, **kw)


def test_kv_cache_is_written_in_place_and_bounded(monkeypatch):
    monkeypatch.setattr(kv_cache, "SPARE_SLOTS", 2)
    model = _model(4)  # cond_length 3: capacity 8 slots
    cond = EqarCondition(model, torch.tensor([1, 2]), guided=True, use_cache=True, num_tokens=40, fast=True)
    ref = EqarCondition(model, torch.tensor([1, 2]), guided=True, use_cache=True, num_tokens=40, fast=False)
    assert torch.equal(cond(0, None), ref(0, None))
    g = torch.Generator().manual_seed(0)
    ptrs = set()
    with torch.no_grad():
        for i in range(1, 40):
            token = torch.randn(2, 16, generator=g)
            assert torch.equal(cond(i, token), ref(i, token))
            ptrs.add((cond.stepper.keys.data_ptr(), cond.stepper.values.data_ptr()))
    assert len(ptrs) == 1 and cond.stepper.keys.shape[3] == 8


def test_family_sampling_takes_the_fast_path_by_default():
    """What train.py --mode eval runs: the family's settings leave fast_path on; latents equal the module path."""
    from dataclasses import replace
    from engine.config import load_config
    cfg = load_config("configs/debug/eqar_debug.yaml", ["sample.cfg=2.0", "tokenizer.vae_norm=0.5"])
    model = _model(5)
    st = eqar_sample_settings(cfg, model)
    assert st.sampler.fast_path and not st.sampler.batched_head
    labels = torch.tensor([3, 6])
    fast = eqar_sample(model, labels, row_generators(2, range(2)), st)
    ref = eqar_sample(model, labels, row_generators(2, range(2)), replace(st, sampler=replace(st.sampler,
                                                                                             fast_path=False)))
    assert torch.equal(fast, ref)
