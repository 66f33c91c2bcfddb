"""Family eqtok: the one-backward GAN step equals the release's two separate objectives, the LitEma warm-up,
stage 2 (EMA init, frozen encoder/quant layer, from ours or a Lightning file), and the trained tokenizer as
tokenizer.kind=column (our container and the Lightning one) feeding the eqar family."""
import logging

import pytest
import torch

from engine.config import load_config
from models import build_model
from models.eqtok.family import eqtok_ema_decay, loss_weights, perceptual_metric
from tokenizer import build_tokenizer
from models.eqtok import losses as cl
from tokenizer.column import gaussian_sample
from tests.column_ema import ColumnEMA

RECIPE = "configs/debug/eqtok_debug.yaml"


def _cfg(*over):
    return load_config(RECIPE, list(over))


def test_one_backward_equals_the_two_official_objectives():
    cfg = _cfg("loss.disc_start=0")
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    w = loss_weights(cfg)
    torch.manual_seed(5)
    total, logs = model(x, 10, w)
    total.backward()
    got = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    # the release: the autoencoder objective (discriminator used as is, its gradients dropped) and, separately,
    # the discriminator objective on detached reconstructions
    model.zero_grad(set_to_none=True)
    torch.manual_seed(5)
    mean = model.encode_mean(x)
    x_hat = model.decode(gaussian_sample(mean))
    ae, _ = cl.autoencoder_loss(x, x_hat, mean, model.loss.logvar, 10, last_layer=model.decoder.conv_out.weight,
                                discriminator=model.loss.discriminator, **w)
    disc_names = [n for n, _ in model.named_parameters() if n.startswith("loss.discriminator.")]
    ae_names = [n for n, p in model.named_parameters() if n not in disc_names and n in got]
    ae_grads = torch.autograd.grad(ae, [model.get_parameter(n) for n in ae_names], allow_unused=True)
    d, _ = cl.discriminator_loss(x, x_hat, model.loss.discriminator, 10, 0)
    d_grads = torch.autograd.grad(d, [model.get_parameter(n) for n in disc_names])
    assert logs["g"] != 0 and logs["d_loss"] > 0
    for n, g in zip(ae_names, ae_grads):
        assert torch.allclose(got[n], g, atol=1e-5, rtol=1e-4), n
    for n, g in zip(disc_names, d_grads):
        assert torch.allclose(got[n], g, atol=1e-6, rtol=1e-4), n
    assert not any(n.startswith("semantic_decoder.") for n in got)  # no teacher: semantic decoder unused


def test_discriminator_term_off_before_disc_start():
    cfg = _cfg("loss.disc_start=100")
    model, _ = build_model(cfg)
    total, logs = model(torch.rand(2, 3, 16, 16) * 2 - 1, 99, loss_weights(cfg))
    assert "g" not in logs and logs["d_loss"] == 0.0


def test_litema_warmup_rule():
    cfg = _cfg("train.ema_decay=0.99")
    assert eqtok_ema_decay(0, cfg) == pytest.approx(2 / 11)
    assert eqtok_ema_decay(9, cfg) == pytest.approx(11 / 20)
    assert eqtok_ema_decay(10_000, cfg) == 0.99


def test_perceptual_off_with_a_logged_line(caplog):
    cfg = _cfg("loss.perceptual=lpips", "loss.lpips_path=null")
    with caplog.at_level(logging.INFO):
        assert perceptual_metric(cfg, torch.device("cpu")) is None
    assert "perceptual loss off: loss.lpips_path is null" in caplog.text


def test_perceptual_off_line_reaches_the_run_log(tmp_path):
    """The line the config promises reaches the run's log.txt (the family logs through the standard library, the
    engine through loguru). A missing file named explicitly: tests/test_bad_input.py, eqtok-lpips-file-missing."""
    import subprocess
    import sys

    from tests.helpers import ROOT, env
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "train.py", "--config", RECIPE, "--mode", "pretrain", f"output_dir={out}",
                        "device=cpu", "train.steps=1", "loss.perceptual=lpips", "loss.lpips_path=null"], cwd=ROOT,
                       env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "perceptual loss off: loss.lpips_path is null" in (out / "log.txt").read_text()


def _lightning_file(model, path):
    ema = ColumnEMA(model)
    for s in ema.shadow.values():
        s.add_(0.5)  # EMA differs from the live weights
    sd = {k: v for k, v in model.state_dict().items() if not k.startswith("loss.")}
    sd.update(ema.state_dict())
    sd["loss.logvar"] = torch.tensor(0.25)
    torch.save({"state_dict": sd, "epoch": 3, "global_step": 100}, path)
    return ema


def test_stage2_from_lightning_and_tokenizer_kinds(tmp_path):
    import train
    torch.manual_seed(0)
    src, _ = build_model(_cfg())
    ema = _lightning_file(src, tmp_path / "tokenizer.ckpt")
    # the Lightning file as tokenizer.kind=column: EMA weights by default
    tok = build_tokenizer("column", ckpt=str(tmp_path / "tokenizer.ckpt"))
    assert tok.height == 16 and tok.latent_channels == 16  # the size is read off the shapes
    assert torch.equal(tok.model.decoder.conv_out.weight, ema.shadow[("decoder", "conv_out.weight")])
    # stage 2 of our debug size from a Lightning file of the same size
    cfg = _cfg(f"model.init_from={tmp_path / 'tokenizer.ckpt'}", "model.stage2=true")
    m2, fam = build_model(cfg)
    for (mod, name), s in ema.shadow.items():
        assert torch.equal(getattr(m2, mod).get_parameter(name), s)
    assert float(m2.loss.logvar) == 0.25
    trainable = {n for g in fam.training.param_groups(m2, cfg) for n, p in m2.named_parameters() if any(p is q for q in g["params"])}
    assert not any(n.startswith(("encoder.", "quant_layer.")) for n in trainable) and "loss.logvar" not in trainable
    assert any(n.startswith("decoder.") for n in trainable) and any(n.startswith("post_quant_layer.") for n in trainable)
    assert any(n.startswith("loss.discriminator.") for n in trainable)

    # through train.py: stage 1, stage 2 from its checkpoint, then the eqar family on that tokenizer
    s1, s2 = tmp_path / "s1", tmp_path / "s2"
    assert train.main(["--config", RECIPE, f"output_dir={s1}"]) == 0
    c1 = s1 / "checkpoints" / "step_0000003.pt"
    assert train.main(["--config", RECIPE, f"output_dir={s2}", f"model.init_from={c1}", "model.stage2=true"]) == 0
    c2 = s2 / "checkpoints" / "step_0000003.pt"
    a, b = torch.load(c1, weights_only=True), torch.load(c2, weights_only=True)
    assert all(torch.equal(a["ema"][k], b["model"][k]) for k in a["ema"] if k.startswith(("encoder.", "quant_layer.")))
    assert not torch.equal(a["ema"]["decoder.conv_out.weight"], b["model"]["decoder.conv_out.weight"])
    tok = build_tokenizer("column", ckpt=str(c2))
    assert torch.equal(tok.model.decoder.conv_out.weight, b["ema"]["decoder.conv_out.weight"])
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    assert tok.encode(x).shape == (2, 6, 16) and tok.decode(tok.encode(x)).shape == (2, 3, 16, 24)
    assert train.main(["--config", "configs/debug/eqar_debug.yaml", f"output_dir={tmp_path / 'g'}",
                       f"tokenizer.ckpt={c2}"]) == 0
    with pytest.raises(ValueError, match="not a column tokenizer"):
        build_tokenizer("column", ckpt=str(tmp_path / "g" / "checkpoints" / "step_0000002.pt"))


@pytest.mark.slow
def test_two_process_gan_step_under_ddp(tmp_path):
    """The adaptive weight's autograd.grad and the detached-parameter generator term inside one DDP forward."""
    import json
    import subprocess

    from tests.helpers import ROOT, env, torchrun_cmd
    out = tmp_path / "ddp"
    p = subprocess.run(torchrun_cmd(2, "--config", RECIPE, f"output_dir={out}", "loss.disc_start=0",
                                    "train.batch_size=4"), cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    logs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3] and all(r["d_weight"] > 0 and r["d_loss"] > 0 for r in logs)


def test_lpips_from_one_local_file(tmp_path):
    """The merged VGG-16 + LPIPS file maps onto the network (lin{i}.model.1.weight -> lins.i), d(x, x) = 0, and the
    eqtok loss picks it up when loss.lpips_path exists."""
    from models.eqtok.lpips import LPIPS, load_lpips
    torch.manual_seed(0)
    ref = LPIPS()
    for lin in ref.lins:
        torch.nn.init.uniform_(lin.weight, 0.0, 1.0)
    sd = {k: v for k, v in ref.state_dict().items() if k.startswith("features.")}
    sd.update({f"lin{i}.model.1.weight": lin.weight.detach().clone() for i, lin in enumerate(ref.lins)})
    torch.save(sd, tmp_path / "vgg_lpips.pth")
    net = load_lpips(str(tmp_path / "vgg_lpips.pth"))
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert torch.allclose(net(x, y), ref(x, y)) and net(x, y).shape == (2, 1, 1, 1)
    assert torch.all(net(x, y) > 0) and torch.allclose(net(x, x), torch.zeros(2, 1, 1, 1))
    cfg = _cfg("loss.perceptual=lpips", f"loss.lpips_path={tmp_path / 'vgg_lpips.pth'}")
    assert isinstance(perceptual_metric(cfg, torch.device("cpu")), LPIPS)
    sd.pop("lin4.model.1.weight")
    torch.save(sd, tmp_path / "short.pth")
    with pytest.raises(ValueError, match="lins.4.weight"):
        load_lpips(str(tmp_path / "short.pth"))
