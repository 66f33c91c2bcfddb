import pytest
import torch

from tokenizer.column import ColumnTokenizer, build_column_autoencoder, module_state_from_lightning
from models.eqtok.ema import warmup_decay
from tests.column_ema import ColumnEMA
from models.eqtok.losses import (adaptive_weight, autoencoder_loss, discriminator_hinge, discriminator_loss,
                                     reconstruction_nll)


def test_reconstruction_nll_with_pluggable_perceptual():
    x, y = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    logvar = torch.tensor(0.3)
    per = lambda a, b: (a - b).pow(2).mean((1, 2, 3), keepdim=True)  # noqa: E731  any per-image distance
    nll, _ = reconstruction_nll(x, y, logvar, per, 1.0)
    ref = 0.0
    for i in range(2):
        rec = (x[i] - y[i]).abs() + ((x[i] - y[i]) ** 2).mean()
        ref += (rec / torch.exp(logvar) + logvar).sum()
    assert torch.allclose(nll, ref / 2)


def test_hinge_and_adaptive_weight():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.0])
    assert discriminator_hinge(real, fake) == pytest.approx(0.5 * ((0 + 0.5) / 2 + (0 + 1) / 2))
    w = torch.tensor([1.0, 2.0], requires_grad=True)
    nll, g = (3 * w).sum(), (w ** 2).sum()  # grads (3, 3) and (2, 4)
    expect = (18 ** 0.5) / (20 ** 0.5 + 1e-4) * 0.5
    assert adaptive_weight(nll, g, w, 0.5).item() == pytest.approx(expect, rel=1e-5)


def test_autoencoder_loss_schedule_and_terms():
    torch.manual_seed(0)
    tok = build_column_autoencoder("debug")
    x = torch.rand(2, 3, 16, 8) * 2 - 1
    mean = tok.encode_mean(x)
    x_hat, sem = tok.decode(mean, semantic=True)
    logvar = torch.zeros(())
    disc = lambda img: img.mean((1, 2, 3))  # noqa: E731
    teacher = torch.randn_like(sem)
    kw = dict(last_layer=tok.decoder.conv_out.weight, discriminator=disc, semantic_out=sem, semantic_teacher=teacher)
    early, logs_e = autoencoder_loss(x, x_hat, mean, logvar, 100, **kw)
    assert "g" not in logs_e and "semantic" not in logs_e
    nll = (x - x_hat).abs().sum() / 2
    assert early.item() == pytest.approx((nll + 0.01 * 0.5 * (mean ** 2).sum() / 2).item(), rel=1e-5)
    late, logs_l = autoencoder_loss(x, x_hat, mean, logvar, 30000, **kw)
    g = -disc(x_hat).mean()
    sem_t = ((sem - teacher) ** 2).sum() / 2
    ref = early + logs_l["d_weight"] * g + 5.0 * sem_t
    assert late.item() == pytest.approx(ref.item(), rel=1e-5) and logs_l["d_weight"] > 0
    late.backward()
    d, _ = discriminator_loss(x, x_hat, disc, 10)
    assert d.item() == 0.0
    with pytest.raises(TypeError, match="unknown loss weights"):
        autoencoder_loss(x, x_hat, mean, logvar, 0, kl_wieght=1.0)


def test_ema_warmup_and_lightning_names_round_trip():
    torch.manual_seed(1)
    model = build_column_autoencoder("debug")
    ema = ColumnEMA(model, decay=0.99)
    p = model.decoder.conv_out.bias
    start = p.detach().clone()
    with torch.no_grad():
        p.add_(1.0)
    d1 = ema.update(model)
    assert d1 == pytest.approx(2 / 11) and warmup_decay(0.99, 1000) == 0.99
    shadow = ema.shadow[("decoder", "conv_out.bias")]
    assert torch.allclose(shadow, start + (1 - 2 / 11))
    # the Lightning layout the loader reads: our EMA lands on the modules
    sd = {**model.state_dict(), **ema.state_dict()}
    assert sd["ema_decoder.num_updates"].dtype == torch.int32
    loaded = module_state_from_lightning(sd, model, use_ema=True)
    assert torch.allclose(loaded["decoder.conv_out.bias"], shadow)
    tok = ColumnTokenizer(build_column_autoencoder("debug"))
    tok.model.load_state_dict(loaded)
    ema.copy_to(model)
    assert torch.equal(model.decoder.conv_out.bias, tok.model.decoder.conv_out.bias)
