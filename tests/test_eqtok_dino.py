"""The frozen-DINO discriminator of the column tokenizer: the released layouts (backbone file, head names under
loss.discriminator.), strict loading from a local file, the one-line error for a missing file, DiffAug, the
discriminator and the GAN terms against explicit re-statements, and a frozen, shared, bit-identical backbone."""
import copy

import pytest
import torch

from core.loading import CheckpointError
from engine.config import load_config
from engine.optim import build_optimizer
from models import build_model
from models.eqtok.family import eqtok_param_groups, loss_weights
from tests import test_eqtok_restate as H
from tokenizer.column import gaussian_sample
from models.eqtok.diffaug import diff_augment
from models.eqtok.dino_disc import DinoDiscriminator
from models.eqtok.vit import DINO_URL, build_dino, load_dino

RECIPE = "configs/debug/eqtok_debug.yaml"
DEBUG_DEPTHS = (1, 3)


def _dino_file(tmp_path, seed=0):
    sd = H.random_state(build_dino("debug"), seed)
    path = tmp_path / "dino_debug.pth"
    torch.save(sd, path)
    return path, sd


def _cfg(dino_path, *over):
    return load_config(RECIPE, ["model.discriminator=dino", f"model.dino_path={dino_path}", "model.dino_flavour=debug",
                                "model.dino_key_depths=[1,3]", *over])


def test_layouts_on_meta():
    """dino_deitsmall16_pretrain.pth (timm vit_small_patch16_224 names, no head) and the release's head names."""
    with torch.device("meta"):
        net = build_dino("vit_small_16")
        disc = DinoDiscriminator(net)
    expect = {"cls_token": (1, 1, 384), "pos_embed": (1, 197, 384), "patch_embed.proj.weight": (384, 3, 16, 16),
              "patch_embed.proj.bias": (384,), "norm.weight": (384,), "norm.bias": (384,)}
    for i in range(12):
        p = f"blocks.{i}."
        expect.update({p + "norm1.weight": (384,), p + "norm1.bias": (384,), p + "attn.qkv.weight": (1152, 384),
                       p + "attn.qkv.bias": (1152,), p + "attn.proj.weight": (384, 384), p + "attn.proj.bias": (384,),
                       p + "norm2.weight": (384,), p + "norm2.bias": (384,), p + "mlp.fc1.weight": (1536, 384),
                       p + "mlp.fc1.bias": (1536,), p + "mlp.fc2.weight": (384, 1536), p + "mlp.fc2.bias": (384,)})
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expect
    assert sum(p.numel() for p in net.parameters()) == 21_665_664  # ViT-S/16 without a head
    heads = {}
    for i in range(5):  # one head before the blocks, one after each of blocks 2, 5, 8, 11
        p = f"loss.discriminator.heads.{i}."
        for conv, shape, v in (("0.0.", (384, 384, 1), 384), ("1.fn.0.", (384, 384, 9), 384 * 9),
                               ("2.", (1, 384, 1), 384)):
            heads.update({p + conv + "weight_orig": shape, p + conv + "bias": (shape[0],),
                          p + conv + "weight_u": (shape[0],), p + conv + "weight_v": (v,)})
        for norm in ("0.1.", "1.fn.1."):
            heads.update({p + norm + "weight": (384,), p + norm + "bias": (384,)})
    got = {"loss.discriminator." + k: tuple(v.shape) for k, v in disc.state_dict().items()}
    assert got == heads  # the backbone is not part of the state dict, as in the release
    assert not any(p is q for p in disc.parameters() for q in net.parameters())


def test_strict_load_from_a_local_file_and_errors(tmp_path):
    path, sd = _dino_file(tmp_path)
    net = load_dino(path, "debug")
    got = net.state_dict()
    assert set(got) == set(sd)
    for k, v in sd.items():
        if k.endswith("attn.qkv.bias"):
            c = v.numel() // 3  # the key third is zeroed (softmax-invariant), q and v kept
            assert torch.equal(got[k][:c], v[:c]) and torch.equal(got[k][2 * c:], v[2 * c:])
            assert not got[k][c:2 * c].any()
        else:
            assert torch.equal(got[k], v), k
    assert not any(p.requires_grad for p in net.parameters())
    bad = dict(sd, extra=torch.zeros(1))
    torch.save(bad, tmp_path / "extra.pth")
    with pytest.raises(CheckpointError, match="1 unexpected key.*extra"):
        load_dino(tmp_path / "extra.pth", "debug")
    short = {k: v for k, v in sd.items() if k != "blocks.3.mlp.fc2.bias"}
    torch.save(short, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match="blocks.3.mlp.fc2.bias"):
        load_dino(tmp_path / "short.pth", "debug")


def test_missing_file_is_one_line_naming_it_and_its_source(tmp_path):
    missing = tmp_path / "nowhere" / "dino_deitsmall16_pretrain.pth"
    with pytest.raises(FileNotFoundError) as e:
        load_dino(missing)
    msg = str(e.value)
    assert "\n" not in msg and str(missing) in msg and DINO_URL in msg
    with pytest.raises(FileNotFoundError) as e:
        build_model(_cfg(missing))
    assert "\n" not in str(e.value) and str(missing) in str(e.value)


def test_diffaug_equals_a_pixelwise_restatement():
    x = torch.rand(3, 3, 10, 12) * 2 - 1
    for seed in range(4):
        for prob, cutout in ((1.0, 0.2), (0.5, 0.3)):
            a = diff_augment(x, prob, cutout, torch.Generator().manual_seed(seed))
            b = H.augment(x, prob, cutout, torch.Generator().manual_seed(seed))
            assert torch.allclose(a, b, atol=1e-6), (seed, prob)
    assert torch.equal(diff_augment(x, 0.0, 0.2), x)
    assert not torch.equal(diff_augment(x, 1.0, 0.2, torch.Generator().manual_seed(0)), x)


def _restated_disc(disc, sd_backbone, x, state, gen=None, size=16):
    if disc.aug_prob > 0:
        x = H.augment(x, disc.aug_prob, disc.cutout, gen)
    acts, _ = H.vit(sd_backbone, H.dino_prepare(x, size), heads=2, patch=4, depths=disc.key_depths, gelu="tanh")
    params = dict(disc.named_parameters())
    return H.heads(params, state, acts, ks=9)


def test_discriminator_equals_restatement(tmp_path):
    path, _ = _dino_file(tmp_path)
    torch.manual_seed(0)
    backbone = load_dino(path, "debug")
    disc = DinoDiscriminator(backbone, DEBUG_DEPTHS, aug_prob=1.0, cutout=0.2)
    sd_b = backbone.state_dict()
    state = {k: v.clone() for k, v in disc.state_dict().items() if k.endswith(("weight_u", "weight_v"))}
    for shape in ((2, 3, 16, 16), (2, 3, 12, 8)):  # at the backbone's size, and bicubically resized to it
        x = torch.rand(*shape) * 2 - 1
        torch.manual_seed(3)
        got = disc(x)
        ref = _restated_disc(disc, sd_b, x, state, torch.Generator().manual_seed(3))
        assert got.shape == (2, 3 * 16) and torch.allclose(got, ref, atol=1e-4, rtol=1e-4)
    for k, v in state.items():  # the power iteration moved the buffers exactly as re-stated
        assert torch.allclose(disc.state_dict()[k], v, atol=1e-6), k


def test_gan_terms_equal_restatement_and_backbone_stays_frozen(tmp_path):
    path, _ = _dino_file(tmp_path)
    cfg = _cfg(path, "loss.disc_start=0", "model.diffaug_prob=0")
    torch.manual_seed(0)
    model, fam = build_model(cfg)
    disc = model.loss.discriminator
    backbone = disc.backbone
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    assert not any(k.startswith("loss.discriminator.") and "heads" not in k for k in model.state_dict())
    assert all(p is not q for p in model.parameters() for q in backbone.parameters())
    state = {k: v.clone() for k, v in disc.state_dict().items() if k.endswith(("weight_u", "weight_v"))}
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    w = loss_weights(cfg)
    torch.manual_seed(7)
    total, logs = model(x, 10, w)

    # re-statement: nll (logvar 0, no perceptual), the L2 "KL", the adaptive weight, both hinge terms; the heads'
    # power iteration runs on the reconstruction (generator term), then the real, then the detached reconstruction
    torch.manual_seed(7)
    mean = model.encode_mean(x)
    x_hat = model.decode(gaussian_sample(mean))
    sd_b = backbone.state_dict()
    nll = (x - x_hat).abs().sum() / 2
    kl = 0.5 * mean.pow(2).sum() / 2
    fake_g = _restated_disc(disc, sd_b, x_hat, state)
    g = -fake_g.mean()
    last = model.decoder.conv_out.weight
    gn = torch.autograd.grad(nll, last, retain_graph=True)[0].norm()
    gg = torch.autograd.grad(g, last, retain_graph=True)[0].norm()
    d_weight = (gn / (gg + 1e-4)).clamp(0, 1e4) * 0.5
    real = _restated_disc(disc, sd_b, x, state)
    fake = _restated_disc(disc, sd_b, x_hat.detach(), state)
    d = 0.5 * (torch.relu(1 - real).mean() + torch.relu(1 + fake).mean())
    assert logs["g"] == pytest.approx(g.item(), rel=1e-4, abs=1e-5)
    assert logs["d_weight"] == pytest.approx(d_weight.item(), rel=1e-3)
    assert logs["d_loss"] == pytest.approx(d.item(), rel=1e-4)
    ref = nll + 0.01 * kl + d_weight * g + d
    assert total.item() == pytest.approx(ref.item(), rel=1e-5)

    # one optimiser step: the heads move, the backbone has no gradient and is bit-identical
    opt = build_optimizer(model, cfg.train, eqtok_param_groups(model, cfg))
    total.backward()
    head = dict(disc.named_parameters())["heads.0.0.0.weight_orig"]
    head_before = head.detach().clone()
    assert head.grad is not None and head.grad.abs().sum() > 0
    opt.step()
    assert not torch.equal(head, head_before)
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())
    assert all(torch.equal(v, before[k]) for k, v in backbone.state_dict().items())
    ema = copy.deepcopy(model)  # the engine's EMA copy shares the frozen backbone rather than duplicating it
    assert ema.loss.discriminator.backbone is backbone


def test_trains_through_train_py_and_heads_resume_a_gan(tmp_path):
    """Two steps with the DINO discriminator; stage 2 from that run's checkpoint (ours) and from a Lightning file
    with the release's loss.discriminator.heads.* names loads the heads (model.init_loss, the release's default)."""
    import train
    path, _ = _dino_file(tmp_path)
    over = ["model.discriminator=dino", f"model.dino_path={path}", "model.dino_flavour=debug",
            "model.dino_key_depths=[1,3]", "loss.disc_start=0", "train.steps=2", "train.ckpt_every=2"]
    out = tmp_path / "s1"
    assert train.main(["--config", RECIPE, f"output_dir={out}", *over]) == 0
    ck = torch.load(out / "checkpoints" / "step_0000002.pt", weights_only=True)
    heads = {k: v for k, v in ck["model"].items() if k.startswith("loss.discriminator.")}
    assert heads and all(".heads." in k for k in heads)
    from tokenizer import build_tokenizer  # inference needs no discriminator file: the loss parts are dropped
    tok = build_tokenizer("column", ckpt=str(out / "checkpoints" / "step_0000002.pt"))
    assert tok.decode(tok.encode(torch.rand(1, 3, 16, 16) * 2 - 1)).shape == (1, 3, 16, 16)
    cfg = _cfg(path, f"model.init_from={out / 'checkpoints' / 'step_0000002.pt'}", "model.stage2=true")
    m2, _ = build_model(cfg)
    assert all(torch.equal(m2.state_dict()[k], v) for k, v in heads.items())
    # the same heads inside a Lightning state_dict (live + ema_* + loss.*, plus loss tensors we do not model)
    from tests.column_ema import ColumnEMA
    m1, _ = build_model(_cfg(path))
    light = {k: v for k, v in m1.state_dict().items() if not k.startswith("loss.")}
    light.update(ColumnEMA(m1).state_dict())
    light.update({k: v + 1 for k, v in heads.items() if k.endswith("weight_orig")})
    light.update({k: v for k, v in heads.items() if not k.endswith("weight_orig")})
    light["loss.logvar"] = torch.tensor(0.0)
    light["loss.perceptual_loss.lin0.model.1.weight"] = torch.zeros(1, 64, 1, 1)
    torch.save({"state_dict": light}, tmp_path / "tokenizer.ckpt")
    m3, _ = build_model(_cfg(path, f"model.init_from={tmp_path / 'tokenizer.ckpt'}", "model.stage2=true"))
    m4, _ = build_model(_cfg(path, f"model.init_from={tmp_path / 'tokenizer.ckpt'}", "model.stage2=true",
                             "model.init_loss=false"))
    k = "loss.discriminator.heads.2.1.fn.0.weight_orig"
    assert torch.equal(m3.state_dict()[k], heads[k] + 1) and not torch.equal(m4.state_dict()[k], heads[k] + 1)


@pytest.mark.slow
def test_two_process_gan_step_with_the_dino_discriminator(tmp_path):
    """The frozen backbone outside the module tree, the heads' spectral-norm buffers and the release schedule under
    DDP (gloo, 2 processes)."""
    import json
    import subprocess

    from tests.helpers import ROOT, env, torchrun_cmd
    path, _ = _dino_file(tmp_path)
    out = tmp_path / "ddp"
    p = subprocess.run(torchrun_cmd(2, "--config", RECIPE, f"output_dir={out}", "loss.disc_start=0",
                                    "train.batch_size=4", "model.discriminator=dino", f"model.dino_path={path}",
                                    "model.dino_flavour=debug", "model.dino_key_depths=[1,3]",
                                    "train.ae_lr_schedule=warmup_decay", "train.warmup_steps=2"),
                       cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    logs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs] == [1, 2, 3] and all(r["d_weight"] > 0 and r["d_loss"] > 0 for r in logs)
    assert [r["lr_ae"] for r in logs] == pytest.approx([0.0, 5e-4, 5e-4])
