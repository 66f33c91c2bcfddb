import pytest
import torch

from models.eqar.model import FLAVOURS
from models.eqar.condition import sample
from samplers.column_ar import ColumnARSettings, cfg_scale_at, euler_flow
from core.seeding import row_generators


def _model(seed=0, **kw):
    torch.manual_seed(seed)
    model = FLAVOURS["debug"](**kw).eval()
    with torch.no_grad():  # the released init zeroes the head output; randomise so samples depend on everything
        for p in model.diffloss.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model


@pytest.mark.parametrize("cfg,schedule", [(1.0, "linear"), (3.0, "linear"), (2.0, "constant")])
def test_kv_cache_matches_full_recompute(cfg, schedule):
    model = _model()
    labels = torch.tensor([1, 5, 8])
    kw = dict(num_tokens=9, num_steps=3, cfg=cfg, cfg_schedule=schedule)
    cached = sample(model, labels, row_generators(0, range(3)), **kw)
    full = sample(model, labels, row_generators(0, range(3)), use_cache=False, **kw)
    assert cached.shape == (3, 9, 16) and torch.isfinite(cached).all()
    assert torch.allclose(cached, full, atol=1e-5, rtol=1e-5)


def test_cache_with_no_context_window():
    model = _model(cond_length=0)
    labels = torch.tensor([2, 3])
    a = sample(model, labels, row_generators(4, range(2)), num_tokens=5, num_steps=2, cfg=2.0)
    b = sample(model, labels, row_generators(4, range(2)), num_tokens=5, num_steps=2, cfg=2.0, use_cache=False)
    assert torch.allclose(a, b, atol=1e-5)


def test_rows_depend_only_on_their_generator():
    model = _model(1)
    labels = torch.tensor([0, 4, 9])
    s = ColumnARSettings(num_steps=2, cfg=4.0)
    batch = sample(model, labels, row_generators(7, range(3)), s, num_tokens=6)
    alone = sample(model, labels[1:2], row_generators(7, [1]), s, num_tokens=6)
    assert torch.allclose(batch[1:2], alone, atol=1e-5)
    gens = row_generators(8, [0]) + row_generators(7, [1]) + row_generators(8, [2])  # rows 0, 2 change, row 1 not
    other = sample(model, labels, gens, s, num_tokens=6)
    assert torch.allclose(other[1], batch[1], atol=1e-5) and not torch.allclose(other[0], batch[0])


def test_longer_than_training_positions_continue():
    model = _model(2)
    labels = torch.tensor([3, 6])
    s = ColumnARSettings(num_steps=2, cfg=2.0, cfg_schedule="constant")
    long = sample(model, labels, row_generators(1, range(2)), s, num_tokens=48)  # 3x the 16 training tokens
    assert long.shape == (2, 48, 16) and torch.isfinite(long).all()
    short = sample(model, labels, row_generators(1, range(2)), s, num_tokens=16)
    assert torch.allclose(long[:, :16], short, atol=1e-5)  # causal: a longer run only appends tokens
    full = sample(model, labels, row_generators(1, range(2)), s, num_tokens=48, use_cache=False)
    assert torch.allclose(long, full, atol=1e-4)


def test_euler_and_guidance_arithmetic():
    noise = torch.randn(2, 3)
    z = torch.zeros(2, 1)
    calls = []

    def constant(x, t, z):
        calls.append(t[0].item())
        return torch.ones_like(x) * 2.0
    out = euler_flow(constant, z, noise, 4)
    assert torch.allclose(out, noise - 2.0) and calls == [1.0, 0.75, 0.5, 0.25]

    def split(x, t, z):  # conditional rows velocity 3, unconditional rows velocity 1
        return torch.cat([torch.full_like(x[:2], 3.0), torch.full_like(x[2:], 1.0)])
    out = euler_flow(split, torch.zeros(4, 1), noise, 5, scale=1.5)
    assert torch.allclose(out, noise - (1.0 + 1.5 * 2.0))

    def linear(x, t, z):  # v = x: Euler gives x (1 - 1/N)^N
        return x
    assert torch.allclose(euler_flow(linear, z, noise, 10), noise * 0.9 ** 10, atol=1e-6)
    assert cfg_scale_at(0, 16, 7.0) == pytest.approx(1 + 6 / 16) and cfg_scale_at(15, 16, 7.0) == 7.0
    assert cfg_scale_at(3, 16, 7.0, "constant") == 7.0


def test_no_guidance_rows_and_bad_settings():
    model = _model()
    labels = torch.tensor([1])
    with pytest.raises(ValueError, match="one torch.Generator per row"):
        sample(model, labels, row_generators(0, range(2)), num_tokens=2, num_steps=1)
    with pytest.raises(ValueError, match="cfg_schedule"):
        sample(model, labels, row_generators(0, [0]), num_tokens=2, num_steps=1, cfg_schedule="cosine")
    # temperature is a no-op, as released
    a = sample(model, labels, row_generators(0, [0]), num_tokens=3, num_steps=2, temperature=1.0)
    b = sample(model, labels, row_generators(0, [0]), num_tokens=3, num_steps=2, temperature=0.5)
    assert torch.equal(a, b)


def test_sampler_steps_plain_model_functions():
    """No module: the sampler asks a condition function for z_i once per token, in order, handing it the token just
    sampled, and integrates the flow head's guided velocity u + w(c − u) with it."""
    from samplers.column_ar import sample as sample_fns
    b, c, n = 2, 5, 4
    seen = []

    def condition(i, token):  # guided: 2B rows, conditional rows carry i + 1, unconditional rows 0
        seen.append((i, token))
        return torch.cat([torch.full((b, 1), float(i + 1)), torch.zeros(b, 1)])

    def head(x, t, z):
        return z.expand_as(x)

    st = ColumnARSettings(num_steps=2, cfg=3.0, cfg_schedule="constant")
    out = sample_fns(condition, head, row_generators(0, range(b)), st, rows=b, channels=c, num_tokens=n)
    gens = row_generators(0, range(b))
    noise = torch.stack([torch.stack([torch.randn(c, generator=g) for _ in range(n)]) for g in gens])
    want = noise - 3.0 * torch.arange(1, n + 1, dtype=torch.float32)[None, :, None]
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
    assert [i for i, _ in seen] == list(range(n)) and seen[0][1] is None
    for i, token in seen[1:]:
        assert torch.equal(token, out[:, i - 1])
