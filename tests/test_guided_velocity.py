"""The guided velocity as a function of (x, t, condition, scale), for NiT (models.nit_sampling.NiTVelocity, with
the interval decision of samplers.flow.in_interval) and the equivariant column AR's flow head
(samplers.column_ar.guided_velocity): equal to the restated formulas at several t (NiT: u + w·(c − u) inside
[guidance_low, guidance_high], the conditional velocity alone outside; eqar, release `forward_with_cfg`:
v_u + w·(v_c − v_u)), and the one function the samplers step. Also explicit SDE step noise."""
import math

import pytest
import torch

import samplers.column_ar as column_ar
import samplers.flow as flow
from core.seeding import row_generators
from models.eqar import condition as eqar_condition
from models.nit.model import FLAVOURS as NIT
from models.nit.family import NiTSampling
from models.nit.sampling import NiTVelocity, sample_latents
from tests.nit_helpers import randomized

HW = torch.tensor([[2, 3], [1, 2]], dtype=torch.int32)  # two images packed: 6 + 2 tokens


def _nit():
    torch.manual_seed(0)
    return randomized(NIT["debug"](), seed=2)


def guided_velocity(model, x, t, y, hw, w, low=0.0, high=1.0, decide_at=None):
    """NiT's guided velocity at t, guided by the interval decision at `decide_at` (default t)."""
    return NiTVelocity(model, y, hw, w, 1000)(x, t, flow.in_interval(t if decide_at is None else decide_at, low, high))


def _state(seed=0):
    return torch.randn(8, 32, 1, 1, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_nit_guided_velocity_is_the_official_combination_inside_the_interval():
    model = _nit()
    x, y = _state(), torch.tensor([3, 7])
    w, low, high = 2.25, 0.0, 0.7

    def alone(labels, t):  # conditional or unconditional model, each on its own pack
        return model(x.float(), torch.full((2,), t, dtype=torch.float64), labels, HW).double()

    with torch.no_grad():
        for t in (1.0, 0.85, 0.7, 0.5, 0.2, 0.04):
            got = guided_velocity(model, x, t, y, HW, w, low, high)
            c, u = alone(y, t), alone(torch.full_like(y, 1000), t)
            want = u + w * (c - u) if low <= t <= high else c
            assert got.dtype == torch.float64 and got.shape == x.shape
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # w = 1: the conditional velocity everywhere; w = 0: the unconditional one inside the interval
        torch.testing.assert_close(guided_velocity(model, x, 0.5, y, HW, 1.0), alone(y, 0.5), rtol=1e-5,
                                   atol=1e-5)
        torch.testing.assert_close(guided_velocity(model, x, 0.5, y, HW, 0.0),
                                   alone(torch.full_like(y, 1000), 0.5), rtol=1e-5, atol=1e-5)
        # Heun's corrector: evaluated at t_next = 0.75, guided by the decision of t_cur = 0.7
        c, u = alone(y, 0.75), alone(torch.full_like(y, 1000), 0.75)
        torch.testing.assert_close(guided_velocity(model, x, 0.75, y, HW, w, low, high, decide_at=0.7),
                                   u + w * (c - u), rtol=1e-5, atol=1e-5)


class Spy:
    """Stands in for a guided-velocity function: records each call, then delegates (or returns zeros)."""

    def __init__(self, fn, zero=False):
        self.fn, self.zero, self.calls = fn, zero, []

    def __call__(self, *args, **kw):
        self.calls.append((args, kw))
        v = self.fn(*args, **kw)
        return torch.zeros_like(v) if self.zero else v


@pytest.mark.parametrize("mode,heun", [("ode", False), ("ode", True), ("sde", False)])
def test_nit_samplers_step_exactly_the_exposed_function(mode, heun):
    model, y = _nit(), torch.tensor([3, 7])
    noise = _state(1).float()
    steps, w, high = 4, 2.0, 0.7
    velocity = NiTVelocity(model, y, HW, w, 1000)

    def go(v):
        with torch.no_grad():
            if mode == "ode":
                return flow.sample_ode(v, noise, steps, heun=heun, guidance_low=0.0, guidance_high=high)
            gens = row_generators(0, range(2))
            return flow.sample_sde(v, noise, steps, lambda i, x: flow.packed_noise(gens, HW, 32), 0.0, high)

    ref = go(velocity)
    spy = Spy(velocity)
    torch.testing.assert_close(go(spy), ref, rtol=0, atol=0)
    got = [(float(a[1]), a[2]) for a, _ in spy.calls]
    if mode == "ode":
        grid = torch.linspace(1, 0, steps + 1, dtype=torch.float64).tolist()
        want = []
        for i in range(steps):  # Heun's corrector at t_next with the decision of t_cur
            want.append((grid[i], grid[i] <= high))
            if heun and i < steps - 1:
                want.append((grid[i + 1], grid[i] <= high))
    else:
        want = [(t, t <= high) for t in torch.linspace(1, 0.04, steps, dtype=torch.float64).tolist()]
    assert got == want
    # every velocity the sampler uses comes from that function: with it returning 0 the ODE stays at its noise
    if mode == "ode":
        torch.testing.assert_close(go(Spy(velocity, zero=True)), noise.double(), rtol=0, atol=0)
    else:
        assert (go(Spy(velocity, zero=True)) - ref).abs().max() > 1e-3


def test_sde_with_explicit_step_noise_is_the_restated_loop():
    """models.nit_sampling.sample_latents (the family's entry) with the initial and every step noise given: a
    hand-written Euler–Maruyama loop with the same noises, guidance interval [0, 0.6]."""
    model, y = _nit(), torch.tensor([3, 7])
    steps, w, high = 4, 3.0, 0.6
    g = torch.Generator().manual_seed(11)
    hw = torch.tensor([[2, 3]] * 2, dtype=torch.int32)
    noise = torch.randn(12, 32, 1, 1, generator=g)
    eps = [torch.randn(12, 32, 1, 1, generator=g, dtype=torch.float64) for _ in range(steps - 1)]

    def v(x, t):
        def one(labels):
            return model(x.float(), torch.full((2,), t, dtype=torch.float64), labels, hw).double()
        c = one(y)
        if not t <= high:
            return c
        u = one(torch.full_like(y, 1000))
        return u + w * (c - u)

    with torch.no_grad():
        x = noise.double()
        grid = [1.0 - k * 0.96 / (steps - 1) for k in range(steps)] + [0.0]
        for i in range(steps):
            t, t_next = grid[i], grid[i + 1]
            vel = v(x, t)
            d = vel - t * (-(x + (1 - t) * vel) / t)  # v − ½·(2t)·score
            x = x + (t_next - t) * d + (math.sqrt(2 * t) * math.sqrt(t - t_next) * eps[i] if i < steps - 1 else 0)
        want = x.float().reshape(2, 2, 3, 32).permute(0, 3, 1, 2)
        settings = NiTSampling("sde", steps, w, 0.0, high, False, 64, 96, 32)
        got = sample_latents(model, y, None, settings, (64, 96), noise=noise, step_noise=eps)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        # the same noises as a function of the step; generators are not needed when both noises are given
        again = sample_latents(model, y, None, settings, (64, 96), noise=noise, step_noise=lambda i, x: eps[i])
        torch.testing.assert_close(again, got, rtol=0, atol=0)
        other = sample_latents(model, y, None, settings, (64, 96), noise=noise, step_noise=[e * 0 for e in eps])
        assert (other - got).abs().max() > 1e-2
        with pytest.raises(ValueError, match="step_noise holds 2 tensors; 4 SDE steps take 3"):
            sample_latents(model, y, None, settings, (64, 96), noise=noise, step_noise=eps[:2])
        with pytest.raises(ValueError, match="pass generators .* or step_noise"):
            sample_latents(model, y, None, settings, (64, 96), noise=noise)


# ------------------------------------------------------------------------------------------ equivariant AR head
def _eqar(seed=0):
    from models.eqar.model import FLAVOURS
    torch.manual_seed(seed)
    model = FLAVOURS["debug"]().eval()
    with torch.no_grad():  # the released init zeroes the head output: randomise it
        for p in model.diffloss.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


def test_flow_head_guided_velocity_is_the_release_combination():
    net = _eqar().diffloss.net
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 16, generator=g)
    zc, zu = torch.randn(3, 32, generator=g), torch.randn(3, 32, generator=g)
    with torch.no_grad():
        for t in (1.0, 0.75, 0.3, 0.01):
            tt = torch.full((3,), t)
            vc, vu = net(x, tt, zc), net(x, tt, zu)
            for w in (1.0, 1.7, 4.0):
                got = column_ar.guided_velocity(net, x, t, torch.cat([zc, zu]), w)
                torch.testing.assert_close(got, vu + w * (vc - vu), rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(column_ar.guided_velocity(net, x, t, zc), vc, rtol=0, atol=0)
            torch.testing.assert_close(column_ar.guided_velocity(net, x, tt, zc), vc, rtol=0, atol=0)


@pytest.mark.parametrize("cfg", [1.0, 3.0])
def test_column_ar_sampler_steps_exactly_the_exposed_function(monkeypatch, cfg):
    model = _eqar(1)
    labels = torch.tensor([2, 5])
    # the module path (fast_path=False) steps the function; the fast path's fused loop equals it bit for bit
    # (tests/test_eqar_fast_path.py)
    kw = dict(num_tokens=3, num_steps=4, cfg=cfg, cfg_schedule="linear", fast_path=False)
    ref = eqar_condition.sample(model, labels, row_generators(0, range(2)), **kw)
    assert torch.equal(ref, eqar_condition.sample(model, labels, row_generators(0, range(2)),
                                                  **{**kw, "fast_path": True}))
    spy = Spy(column_ar.guided_velocity)
    monkeypatch.setattr(column_ar, "guided_velocity", spy)
    torch.testing.assert_close(eqar_condition.sample(model, labels, row_generators(0, range(2)), **kw), ref, rtol=0,
                               atol=0)
    assert [a[2] for a, _ in spy.calls] == [k / 4 for k in (4, 3, 2, 1)] * 3
    scales = [a[4] for a, _ in spy.calls]
    assert scales == ([None] * 12 if cfg == 1.0 else [column_ar.cfg_scale_at(i, 3, cfg) for i in range(3)
                                                        for _ in range(4)])
    # every flow-head velocity of the sampler comes from that function: zero velocity leaves each token its noise
    monkeypatch.setattr(column_ar, "guided_velocity", Spy(spy.fn, zero=True))
    out = eqar_condition.sample(model, labels, row_generators(0, range(2)), **kw)
    gens = row_generators(0, range(2))
    noise = torch.stack([torch.stack([torch.randn(16, generator=g) for _ in range(3)]) for g in gens])
    torch.testing.assert_close(out, noise, rtol=0, atol=0)
