import pytest
import torch

from models.nit.model import FLAVOURS, unpack
from models.nit.family import NiTSampling
from models.nit.sampling import NiTVelocity, sample_latents
from samplers.flow import (latent_size, ode_grid, packed_noise, sample_nit, sample_ode, sample_sde, sde_grid)
from tests.nit_helpers import randomized


def _v(fn, labels, hw, w=1.0, dtype=torch.float32):
    """The family's guided velocity around a model function (null label 1000)."""
    return NiTVelocity(fn, labels, hw, w, 1000, dtype)


def _gen_noise(generators, hw, c):
    return lambda i, x: packed_noise(generators, hw, c)


class Counter:
    """Wraps a model function; counts calls and image-evaluations (NFE, a guided call counts 2)."""

    def __init__(self, fn):
        self.fn, self.calls, self.nfe, self.ts = fn, 0, 0, []

    def __call__(self, x, t, y, hw):
        self.calls += 1
        self.nfe += 2 if y.shape[0] == 2 * self.batch else 1
        self.ts.append(float(t[0]))
        return self.fn(x, t, y, hw)


def _pack(b=2, h=2, w=3, c=4):
    hw = torch.tensor([[h, w]] * b, dtype=torch.int32)
    return hw, torch.randn(b * h * w, c, 1, 1, generator=torch.Generator().manual_seed(0))


def test_grids_are_the_official_ones():
    assert torch.equal(ode_grid(4), torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0], dtype=torch.float64))
    g = sde_grid(5)
    assert g.dtype == torch.float64 and len(g) == 6
    torch.testing.assert_close(g, torch.tensor([1.0, 0.76, 0.52, 0.28, 0.04, 0.0], dtype=torch.float64))


@pytest.mark.parametrize("mode,steps,heun,low,high,scale", [
    ("ode", 50, False, 0.0, 0.7, 3.0), ("ode", 50, True, 0.0, 0.7, 3.0), ("ode", 50, False, 0.0, 1.0, 1.0),
    ("sde", 250, False, 0.0, 0.7, 2.25), ("sde", 20, False, 0.0, 1.0, 2.0), ("sde", 20, False, 0.3, 0.5, 1.5)])
def test_model_calls_and_nfe(mode, steps, heun, low, high, scale):
    hw, noise = _pack()
    labels = torch.tensor([1, 2])
    m = Counter(lambda x, t, y, hw: torch.zeros_like(x))
    m.batch = 2
    if mode == "ode":
        sample_ode(_v(m, labels, hw, scale), noise, steps, heun=heun, guidance_low=low, guidance_high=high)
        grid = [float(t) for t in torch.linspace(1, 0, steps + 1, dtype=torch.float64)]
        starts = grid[:-1]
        # Heun: one more call on every step but the last, with the decision of that step's t_cur
        evaluated = starts + (starts[:-1] if heun else [])
    else:
        gens = [torch.Generator().manual_seed(i) for i in range(2)]
        sample_sde(_v(m, labels, hw, scale), noise, steps, _gen_noise(gens, hw, 4), low, high)
        grid = [float(t) for t in torch.linspace(1, 0.04, steps, dtype=torch.float64)]
        evaluated = grid  # steps - 1 stochastic steps and the last deterministic one, at t_cur = 0.04
    guided = sum(1 for t in evaluated if scale != 1.0 and low <= t <= high)
    assert m.calls == len(evaluated) == steps + (steps - 1 if heun else 0)
    assert m.nfe == len(evaluated) + guided
    if mode == "ode" and not heun and scale == 3.0:
        assert guided == 35  # t_cur = 0.70, 0.68, ..., 0.02


def test_ode_reaches_the_exact_endpoint_of_a_linear_field():
    hw, noise = _pack()
    x0 = torch.randn_like(noise, dtype=torch.float64)
    # the exact velocity of x_t = (1 - t) x0 + t eps towards one data point: v = eps - x0 = (x - x0) / t
    field = lambda x, t, y, hw: (x - x0) / t[0]  # noqa: E731
    for heun in (False, True):
        out = sample_ode(_v(field, torch.tensor([0, 1]), hw, dtype=torch.float64), noise.double(), steps=7, heun=heun)
        torch.testing.assert_close(out, x0, rtol=0, atol=1e-12)
    const = torch.randn_like(noise)
    out = sample_ode(_v(lambda x, t, y, hw: const.expand_as(x), torch.tensor([0, 1]), hw), noise, steps=10)
    torch.testing.assert_close(out, (noise - const).double(), rtol=0, atol=1e-6)


def test_cfg_combination_and_interval():
    hw, noise = _pack()
    labels = torch.tensor([4, 5])
    # velocity 2 for a real label, 1 for the null class
    field = lambda x, t, y, hw: torch.repeat_interleave(  # noqa: E731
        torch.where(y == 1000, 1.0, 2.0), 6)[:, None, None, None].expand_as(x).to(x.dtype)
    out = sample_ode(_v(field, labels, hw, 3.0), noise, steps=10)
    torch.testing.assert_close(out, noise.double() - (1 + 3.0 * (2 - 1)), rtol=0, atol=1e-6)
    out = sample_ode(_v(field, labels, hw, 3.0), noise, steps=10, guidance_low=0.0, guidance_high=0.5)
    # t_cur 1.0 .. 0.6 unguided (v = 2), 0.5 .. 0.1 guided (v = 4)
    torch.testing.assert_close(out, noise.double() - 0.1 * (5 * 2 + 5 * 4), rtol=0, atol=1e-6)


def test_sde_step_restated():
    hw, noise = _pack(b=1)
    g = torch.Generator().manual_seed(3)
    a = 0.3
    field = lambda x, t, y, hw: a * x  # noqa: E731
    out = sample_sde(_v(field, torch.tensor([1]), hw, dtype=torch.float64), noise, 3, _gen_noise([g], hw, 4))
    g = torch.Generator().manual_seed(3)
    x = noise.double()
    for t, t_next in [(1.0, 0.52), (0.52, 0.04)]:
        eps = torch.randn(noise.shape, generator=g).double()
        v = a * x
        s = -(x + (1 - t) * v) / t
        x = x + (v - t * s) * (t_next - t) + (2 * t) ** 0.5 * (t - t_next) ** 0.5 * eps
    v = a * x
    x = x - 0.04 * (v - 0.04 * (-(x + 0.96 * v) / 0.04))
    torch.testing.assert_close(out, x, rtol=1e-10, atol=1e-10)


def test_sde_with_the_exact_field_of_a_point_mass_lands_at_the_right_spread():
    # marginal at t = 0.04 is N(0.96 x0, 0.04²); the last deterministic step maps it to x0 - 0.04 e, e ~ N(0, 1)
    hw = torch.tensor([[40, 50]], dtype=torch.int32)
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(2000, 4, 1, 1, generator=g)
    x0 = torch.full_like(noise, 0.5, dtype=torch.float64)
    out = sample_sde(_v(lambda x, t, y, hw: (x - x0) / t[0], torch.tensor([0]), hw), noise, 250,
                     _gen_noise([g], hw, 4))
    err = out - x0  # (Euler-Maruyama's bias: std 0.0549 at 50 steps, 0.0424 at 250, 0.0400 at 1000)
    assert abs(err.mean().item()) < 0.004 and abs(err.std().item() - 0.04) < 0.004


@pytest.mark.parametrize("mode", ["ode", "sde"])
def test_images_depend_only_on_their_generator_and_pack_equals_alone(mode):
    torch.manual_seed(0)
    model = randomized(FLAVOURS["debug"]())
    labels = torch.tensor([3, 1, 7])
    st = NiTSampling(mode, 4, 2.0, 0.0, 0.7, False, 64, 96, 32)  # token grid 2 x 3
    three = sample_latents(model, labels, [torch.Generator().manual_seed(s) for s in (10, 11, 12)], st, (64, 96))
    alone = sample_latents(model, labels[1:2], [torch.Generator().manual_seed(11)], st, (64, 96))
    other = sample_latents(model, torch.tensor([5, 1]), [torch.Generator().manual_seed(s) for s in (99, 11)], st,
                           (64, 96))
    assert three.shape == (3, 32, 2, 3)
    torch.testing.assert_close(three[1], alone[0], rtol=0, atol=1e-5)
    torch.testing.assert_close(other[1], alone[0], rtol=0, atol=1e-5)
    assert (three[0] - three[2]).abs().max() > 1e-3


def test_packed_noise_layout_and_sample_shape():
    hw = torch.tensor([[2, 3], [1, 2]], dtype=torch.int32)
    n = packed_noise([torch.Generator().manual_seed(1), torch.Generator().manual_seed(2)], hw, channels=4)
    assert n.shape == (8, 4, 1, 1)
    torch.testing.assert_close(n[6:], torch.randn((2, 4, 1, 1), generator=torch.Generator().manual_seed(2)))
    # sample_nit's output is the unpacked grid: compare with unpack of the packed ODE result
    model = lambda x, t, y, hw: x * 0.5  # noqa: E731
    labels = torch.tensor([0, 1])
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    hw = torch.tensor([[2, 3]] * 2, dtype=torch.int32)
    out = sample_nit(_v(model, labels, hw), gens(), grids=[(2, 3)] * 2, channels=4, steps=3)
    ref = sample_ode(_v(model, labels, hw), packed_noise(gens(), hw, 4), 3)
    for a, b in zip(out, unpack(ref.float(), hw)):
        torch.testing.assert_close(a, b)
    assert latent_size(512, 768) == (16, 24)
    with pytest.raises(ValueError, match="multiple of 32"):
        latent_size(432, 768)
    with pytest.raises(ValueError, match="one generator per image"):
        packed_noise([torch.Generator()], hw, 4)


def test_sample_entry_is_the_sampler_at_the_image_size():
    from samplers.flow import README_SETTINGS
    model = randomized(FLAVOURS["debug"]())
    gens = lambda: [torch.Generator().manual_seed(s) for s in (1, 2)]  # noqa: E731
    st = NiTSampling("ode", 3, 2.0, 0.0, 1.0, False, 64, 96, 32)
    out = sample_latents(model, torch.tensor([1, 2]), gens(), st, (64, 96))
    assert out.shape == (2, 32, 2, 3)
    hw = torch.tensor([[2, 3]] * 2, dtype=torch.int32)
    with torch.no_grad():
        ref = sample_nit(_v(model, torch.tensor([1, 2]), hw, 2.0), gens(), grids=[(2, 3)] * 2, channels=32, steps=3)
    torch.testing.assert_close(out, torch.stack(ref), rtol=0, atol=0)
    assert README_SETTINGS[(256, 256)] == {"mode": "sde", "steps": 250, "cfg_scale": 2.25, "guidance_high": 0.7}
