import pytest
import torch

from models.nit.model import FLAVOURS, pack_latents
from models.nit.loss import nit_loss, nit_lr, nit_optimizer, sample_t
from tests.nit_helpers import randomized


def _batch(seed=0, with_target=True):
    g = torch.Generator().manual_seed(seed)
    lats = [torch.randn(32, 2, 3, generator=g), torch.randn(32, 4, 4, generator=g), torch.randn(32, 1, 5, generator=g)]
    x, hw = pack_latents(lats)
    batch = {"x": x, "hw_list": hw, "label": torch.tensor([3, 7, 11])}
    if with_target:
        batch["repa_target"] = torch.randn(x.shape[0], 48, generator=g)
    return batch, lats


class Spy(torch.nn.Module):
    """Records its inputs; answers a fixed function of them."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x, t, y, hw, return_zs=False):
        self.calls.append((x.clone(), t.clone(), y.clone(), return_zs))
        return self.inner(x, t, y, hw, return_zs=return_zs)


def test_loss_matches_an_independent_restatement():
    torch.manual_seed(0)
    model = randomized(FLAVOURS["debug"]())
    batch, lats = _batch()
    t = torch.tensor([0.2, 0.5, 0.9])
    noise = torch.randn_like(batch["x"])
    drop = torch.tensor([False, True, False])
    loss, logs = nit_loss(model, batch, t=t, noise=noise, drop=drop, repa_coeff=0.5)

    # per image, in float64: x_t, v = eps - x0, per-token squared error and cosine, then the token mean
    errs, coss, repas, start = [], [], [], 0
    with torch.no_grad():
        y = torch.tensor([3, 1000, 11])
        x_t = torch.cat([(1 - t[i]) * batch["x"][s:s + n] + t[i] * noise[s:s + n]
                         for i, (s, n) in enumerate([(0, 6), (6, 16), (22, 5)])])
        v_hat, zs = model(x_t, t, y, batch["hw_list"], return_zs=True)
    for i, n in enumerate([6, 16, 5]):
        for k in range(start, start + n):
            v = (noise[k] - batch["x"][k]).double().flatten()
            p = v_hat[k].double().flatten()
            errs.append(((p - v) ** 2).mean())
            coss.append(1 - p @ v / (p.norm() * v.norm()))
            z, q = batch["repa_target"][k].double(), zs[k].double()
            repas.append(1 - z @ q / (z.norm() * q.norm()))
        start += n
    expect = torch.stack(errs).mean() + torch.stack(coss).mean() + 0.5 * torch.stack(repas).mean()
    assert loss.item() == pytest.approx(expect.item(), rel=1e-5)
    assert logs["mse"] == pytest.approx(torch.stack(errs).mean().item(), rel=1e-5)
    assert logs["repa"] == pytest.approx(torch.stack(repas).mean().item(), rel=1e-5)


def test_model_sees_dropped_labels_per_image_t_and_the_interpolant():
    spy = Spy(FLAVOURS["debug"]())
    batch, _ = _batch()
    g = torch.Generator().manual_seed(5)
    nit_loss(spy, batch, generator=g, label_drop=0.5, repa_coeff=0.0)
    x_t, t, y, return_zs = spy.calls[-1]
    assert not return_zs
    # the same draws, restated: t (B normals), noise, drop (B uniforms), in that order
    g = torch.Generator().manual_seed(5)
    t_ref = torch.sigmoid(torch.randn(3, generator=g))
    noise = torch.randn(batch["x"].shape, generator=g)
    drop = torch.rand(3, generator=g) < 0.5
    torch.testing.assert_close(t, t_ref)
    assert y.tolist() == [1000 if d else l for d, l in zip(drop.tolist(), [3, 7, 11])]
    tt = torch.cat([t_ref[i].repeat(n) for i, n in enumerate([6, 16, 5])])[:, None, None, None]
    torch.testing.assert_close(x_t, (1 - tt) * batch["x"] + tt * noise)


def test_same_generator_same_loss_and_backward_reaches_the_projector():
    model = randomized(FLAVOURS["debug"]()).train()
    batch, _ = _batch()
    l1, _ = nit_loss(model, batch, generator=torch.Generator().manual_seed(1))
    l2, _ = nit_loss(model, batch, generator=torch.Generator().manual_seed(1))
    l3, _ = nit_loss(model, batch, generator=torch.Generator().manual_seed(2))
    assert l1.item() == l2.item() != l3.item()
    l1.backward()
    assert model.projector[4].weight.grad.abs().max() > 0
    assert model.final_layer.linear.weight.grad.abs().max() > 0


def test_repa_encoder_grids_and_errors():
    model = randomized(FLAVOURS["debug"]())
    batch, lats = _batch()
    target = batch.pop("repa_target")
    grids = []
    start = 0
    for lat in lats:  # per-image (z, h, w) grids holding the same features as the packed target
        h, w = lat.shape[1:]
        grids.append(target[start:start + h * w].T.reshape(48, h, w))
        start += h * w
    kw = dict(t=torch.tensor([0.3, 0.3, 0.3]), noise=torch.zeros_like(batch["x"]), drop=torch.zeros(3, dtype=bool))
    a, la = nit_loss(model, batch, repa_encoder=lambda b: grids, **kw)
    b, lb = nit_loss(model, {**batch, "repa_target": target}, **kw)
    assert la["repa"] == pytest.approx(lb["repa"], rel=1e-6)
    with pytest.raises(ValueError, match="repa_target"):
        nit_loss(model, batch, **kw)
    c, lc = nit_loss(model, batch, repa_coeff=0.0, **kw)  # REPA off: no target needed
    assert "repa" not in lc and lc["loss"] == pytest.approx(lc["mse"] + lc["dir"])
    with pytest.raises(ValueError, match="grid"):
        nit_loss(model, batch, repa_encoder=lambda b: [g[:, :1] for g in grids], **kw)


def test_timestep_and_label_drop_distributions():
    g = torch.Generator().manual_seed(0)
    t = sample_t(40000, g, 0.0, 1.0)
    logit = torch.log(t / (1 - t))
    assert abs(logit.mean()) < 0.03 and abs(logit.std() - 1) < 0.03
    spy = Spy(FLAVOURS["debug"](z_dim=0))
    batch, _ = _batch(with_target=False)
    batch["label"] = torch.zeros(3, dtype=torch.long)
    dropped = 0
    for i in range(300):
        nit_loss(spy, batch, generator=g, repa_coeff=0.0)
        dropped += int((spy.calls[-1][2] == 1000).sum())
    assert 0.07 < dropped / 900 < 0.13


def test_optimizer_settings_and_lr():
    opt = nit_optimizer(FLAVOURS["debug"](), lr=1e-4)
    group = opt.param_groups[0]
    assert group["betas"] == (0.9, 0.95) and group["weight_decay"] == 0.01 and group["eps"] == 1e-6
    assert nit_lr("NiT_XL", 8) == pytest.approx(1e-4) and nit_lr("NiT_B", 8) == pytest.approx(4e-4)


def test_repa_image_encoder_resizes_to_one_patch_per_token_and_follows_the_flip():
    from models.nit.loss import pack_features, repa_image_encoder
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 48, kernel_size=16, stride=16)
    seen = []

    def encoder(img):
        seen.append(img.shape)
        return conv(img)

    images = [torch.rand(3, 70, 100), torch.rand(3, 64, 64)]
    hw = torch.tensor([[2, 3], [4, 4]], dtype=torch.int32)
    batch = {"hw_list": hw, "images": images, "flip": torch.tensor([True, False])}
    grids = repa_image_encoder(encoder)(batch)
    assert [tuple(s) for s in seen] == [(1, 3, 32, 48), (1, 3, 64, 64)]
    assert [tuple(g.shape) for g in grids] == [(48, 2, 3), (48, 4, 4)]
    with torch.no_grad():
        torch.testing.assert_close(grids[1], conv(images[1][None])[0])  # 64 -> 64: no resampling
        flipped = torch.nn.functional.interpolate(images[0].flip(-1)[None], size=(32, 48), mode="bicubic",
                                                  align_corners=False, antialias=True)
        torch.testing.assert_close(grids[0], conv(flipped)[0])
    tokens = repa_image_encoder(lambda img: conv(img).flatten(2).transpose(1, 2))(batch)  # (1, h*w, z) form
    torch.testing.assert_close(pack_features(tokens, hw), pack_features(grids, hw))
    assert pack_features(grids, hw).shape == (22, 48)
