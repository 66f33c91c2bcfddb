"""The `nit` family record: recipes with the official settings, weight files (released flat safetensors, accelerate
save_state folders, one-line key errors through train.py), packs per rank and step, guidance in the official w
convention, REPA through a TorchScript encoder, and the sampling-settings checks."""
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import train
from datasets.lpfhp import pack_lengths
from datasets.nit_meta import read_data_meta, sampler_meta_name, token_lengths
from engine.config import load_config
from engine.generate import load_weights
from models import build_model, get_family
from models.nit.model import FLAVOURS, PACK_LEN
from models.nit.family import (NiTSampling, family_loss, family_sample, pack_batches, pack_dataset, param_groups,
                               sample_settings, weights_file)
from models.nit.loss import nit_loss, nit_lr
from models.family import TrainContext
from samplers.flow import packed_noise
from tests.nit_helpers import randomized, write_eval_assets, write_latent_dataset

DEBUG = "configs/debug/nit_debug.yaml"
RECIPES = {"S": "NiT_S", "B": "NiT_B", "L": "NiT_L", "XL": "NiT_XL", "XXL": "NiT_XXL"}


@pytest.mark.parametrize("size", sorted(RECIPES))
def test_recipes_carry_the_official_training_settings(size):
    cfg = load_config(f"configs/nit_{size}.yaml")
    flavour = RECIPES[size]
    t = cfg.train
    assert cfg.family == "nit" and cfg.model.flavour == flavour
    assert (list(t.betas), t.weight_decay, t.eps, t.grad_clip, t.warmup_steps, t.ema_decay) == (
        [0.9, 0.95], 0.01, 1e-6, 1.0, 0, 0.9999)
    assert (t.batch_size, t.precision) == (8, "bf16")
    assert t.lr == pytest.approx(nit_lr(flavour, 8)) == pytest.approx(4e-4 if size in ("S", "B") else 1e-4)
    assert t.steps == (1_000_000 if size == "XXL" else 2_000_000) and t.ckpt_every == 2000
    assert cfg.data.max_seq_len == PACK_LEN[flavour]
    assert os.path.basename(cfg.data.sampler_meta) == sampler_meta_name(cfg.data.data_meta, PACK_LEN[flavour])
    assert (cfg.loss.label_drop, cfg.loss.repa_coeff, cfg.tokenizer.kind) == (0.1, 1.0, "dcae")
    with torch.device("meta"):
        model, fam = build_model(cfg)
    assert fam is get_family("nit") and model.encoder_depth == FLAVOURS[flavour].defaults["encoder_depth"]
    st = sample_settings(cfg, model)
    assert (st.mode, st.steps, st.cfg_scale, st.guidance_high, st.height) == ("sde", 250, 2.25, 0.7, 256)


# --------------------------------------------------------------------------------------------------- weights
@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    return write_eval_assets(tmp_path_factory.mktemp("nit_family_assets"))


def _equal(model, sd):
    return all(torch.equal(v, sd[k]) for k, v in model.state_dict().items())


def test_xl_recipe_fits_the_released_layout_on_meta():
    from pathlib import Path

    from core.loading import mismatch
    spec = json.loads((Path(__file__).resolve().parents[1] / "assets/layouts/keys_nit_xl.json").read_text())
    with torch.device("meta"):
        model, _ = build_model(load_config("configs/nit_XL.yaml"))
    official = {k: torch.empty(s, device="meta") for k, s in spec["keys"].items()}
    assert mismatch(model, official) == ([], [], []) and len(official) == 409


def test_released_flat_safetensors_loads_strictly(assets):
    cfg = load_config(DEBUG, [f"eval.pretrained_path={assets['weights']}"])
    model, fam = build_model(cfg)
    assert load_weights(model, cfg, fam.name) == str(assets["weights"])
    assert _equal(model, assets["state_dict"])


def test_accelerate_folder_gives_ema_by_default(assets, tmp_path):
    from safetensors.torch import save_file
    sd = assets["state_dict"]
    online = {k: v + 1 for k, v in sd.items()}
    folder = tmp_path / "checkpoint-1000000"
    folder.mkdir()
    # accelerate saves the wrapped models: DDP's `module.` prefix included
    save_file({f"module.{k}": v for k, v in sd.items()}, str(folder / "model.safetensors"))
    save_file({f"module.{k}": v for k, v in online.items()}, str(folder / "model_1.safetensors"))
    assert weights_file(str(folder)) == str(folder / "model.safetensors")
    assert weights_file(str(folder), use_ema=False) == str(folder / "model_1.safetensors")
    assert weights_file(str(assets["weights"])) == str(assets["weights"])
    for use_ema, want in ((True, sd), (False, online)):
        path = weights_file(str(folder), use_ema)
        cfg = load_config(DEBUG, [f"eval.pretrained_path={path}"])
        model, fam = build_model(cfg)
        load_weights(model, cfg, fam.name)
        assert _equal(model, want)
    with pytest.raises(FileNotFoundError, match="model_1.safetensors"):
        weights_file(str(tmp_path), use_ema=False)


@pytest.mark.parametrize("change", ["missing", "extra"])
def test_key_mismatch_is_one_line_through_train_py(assets, tmp_path, capsys, fid_weights, change):
    from safetensors.torch import save_file
    sd = dict(assets["state_dict"])
    if change == "missing":
        sd.pop("blocks.1.attn.q_norm.weight")
        key = "blocks.1.attn.q_norm.weight"
    else:
        sd["blocks.2.attn.qkv.weight"] = torch.zeros(3)
        key = "blocks.2.attn.qkv.weight"
    bad = tmp_path / "model_bad.safetensors"
    save_file(sd, str(bad))
    rc = train.main(["--config", DEBUG, "--ckpt", str(bad), "--sample-dir", str(tmp_path / "out"), "--mode", "ode",
                     f"tokenizer.ckpt={assets['dcae']}", f"eval.ref_stats={assets['ref']}",
                     f"eval.inception_weights={fid_weights}", "device=cpu"])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert rc == 2 and len(errors) == 1
    assert str(bad) in errors[0] and key in errors[0]
    assert ("1 missing key(s)" if change == "missing" else "1 unexpected key(s)") in errors[0]


# ----------------------------------------------------------------------------------------------------- packs
@pytest.fixture()
def packed(tmp_path):
    shapes = [(2, 2)] * 6 + [(4, 4)] * 2 + [(3, 5), (5, 3), (2, 3), (3, 2)]
    root, meta, _ = write_latent_dataset(tmp_path, shapes, list(range(len(shapes))), channels=32)
    packs = pack_lengths(token_lengths(read_data_meta(meta)), 32, verbose=False)
    from datasets.nit_meta import write_sampler_meta
    write_sampler_meta(str(tmp_path / "packs.json"), packs)
    return [f"data.data_meta={meta}", f"data.sampler_meta={tmp_path / 'packs.json'}", f"data.latent_dirs={root}"], \
        packs


def test_one_pack_per_rank_and_micro_batch(packed):
    args, packs = packed
    cfg = load_config(DEBUG, [*args, "train.batch_size=4"])
    ds = pack_dataset(cfg)
    assert len(ds) == len(packs) >= 4
    seen = []
    for step in range(3):
        per_rank = [pack_batches(ds, cfg, step, r, 2) for r in range(2)]
        assert [len(b) for b in per_rank] == [2, 2]  # 4 packs per step over 2 ranks: one per micro-batch
        ids = [tuple(b["indices"].tolist()) for bs in per_rank for b in bs]
        assert len(set(ids)) == 4 and all(i in map(tuple, packs) for i in ids)
        again = [pack_batches(ds, cfg, step, r, 2) for r in range(2)]
        assert all(torch.equal(a["x"], b["x"]) for x, y in zip(per_rank, again) for a, b in zip(x, y))
        seen += ids
        b = per_rank[0][0]
        assert get_family("nit").training.batch_rows(b) == len(b["label"]) == b["hw_list"].shape[0]
        assert b["x"].shape[0] == int((b["hw_list"][:, 0] * b["hw_list"][:, 1]).sum())
    # the first epoch visits every pack once (steps_per_epoch = packs / (world x 2))
    epoch = len(packs) // 4
    assert len(set(seen[:4 * min(epoch, 3)])) == 4 * min(epoch, 3)
    with pytest.raises(ValueError, match="train.grad_accum 3 does not fit"):
        pack_batches(ds, load_config(DEBUG, [*args, "train.batch_size=4", "train.grad_accum=3"]), 0, 0, 2)


def test_without_repa_the_projector_is_frozen(packed):
    args, _ = packed
    cfg = load_config(DEBUG, args)
    model, _ = build_model(cfg)
    groups = param_groups(model, cfg)
    ids = {id(p) for p in groups[0]["params"]}
    assert not any(id(p) in ids for p in model.projector.parameters())
    assert all(id(p) in ids for n, p in model.named_parameters() if not n.startswith("projector."))
    assert groups[0]["weight_decay"] == 0.01


def test_repa_through_an_exported_encoder(packed, tmp_path):
    args, _ = packed
    enc = torch.nn.Conv2d(3, 48, kernel_size=16, stride=16)
    h, w = torch.export.Dim("h", min=1, max=64), torch.export.Dim("w", min=1, max=64)
    prog = torch.export.export(enc, (torch.randn(1, 3, 32, 48),), dynamic_shapes=({2: 16 * h, 3: 16 * w},))
    torch.export.save(prog, str(tmp_path / "encoder.pt2"))
    meta = read_data_meta(args[0].split("=", 1)[1])
    g = np.random.default_rng(0)
    for e in meta:  # the "original" images, larger than their encoded size
        p = tmp_path / "images" / e["image_file"]
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(g.integers(0, 256, (e["image_h"] + 8, e["image_w"] + 8, 3), dtype=np.uint8)).save(p)
    cfg = load_config(DEBUG, [*args, f"loss.repa_encoder={tmp_path / 'encoder.pt2'}",
                              f"data.image_dir={tmp_path / 'images'}"])
    model, _ = build_model(cfg)
    assert any(id(p) in {id(q) for q in param_groups(model, cfg)[0]["params"]} for p in model.projector.parameters())
    batch = pack_batches(pack_dataset(cfg), cfg, 0, 0, 1)[0]
    assert len(batch["images"]) == len(batch["label"])
    torch.manual_seed(3)
    loss, logs = family_loss(model, batch, TrainContext(cfg=cfg))
    # restated: flip, resize to 16 x the latent grid, encode, one feature per token in row-major order
    feats = []
    for img, (h, w), flip in zip(batch["images"], batch["hw_list"].tolist(), batch["flip"].tolist()):
        img = img.flip(-1) if flip else img
        x = torch.nn.functional.interpolate(img[None], size=(16 * h, 16 * w), mode="bicubic", align_corners=False,
                                            antialias=True)
        feats.append(enc(x)[0].flatten(1).T)
    torch.manual_seed(3)
    want, _ = nit_loss(model, {**batch, "repa_target": torch.cat(feats).detach()}, label_drop=0.1)
    assert "repa" in logs and loss.item() == pytest.approx(want.item(), rel=1e-6)


# -------------------------------------------------------------------------------------------------- sampling
def _model():
    torch.manual_seed(0)
    return randomized(FLAVOURS["debug"](), seed=1)


def test_cfg_scale_is_the_official_weight_and_interval():
    model = _model()
    labels = torch.tensor([3, 7])
    gens = lambda: [torch.Generator().manual_seed(s) for s in (10, 11)]  # noqa: E731
    hw = torch.tensor([[2, 3]] * 2, dtype=torch.int32)
    noise = packed_noise(gens(), hw, 32).double()

    def v(x, t, y):
        return model(x.float(), torch.full((2,), t), y, hw).double()

    null = torch.full_like(labels, 1000)
    w = 2.5
    # ODE, 2 steps, interval [0, 0.7]: t = 1 unguided (conditional only), t = 0.5 guided u + w (c - u)
    x = noise + (0.5 - 1.0) * v(noise, 1.0, labels)
    c, u = v(x, 0.5, labels), v(x, 0.5, null)
    x = x + (0.0 - 0.5) * (u + w * (c - u))
    st = NiTSampling("ode", 2, w, 0.0, 0.7, False, 64, 96, 32)
    out = family_sample(model, labels, gens(), st)
    assert out.shape == (2, 32, 2, 3)
    torch.testing.assert_close(out, x.float().reshape(2, 2, 3, 32).permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)
    # w = 1: the conditional model alone, one pack per call
    calls = []
    model_fn = model.forward

    def counting(x, t, y, hw_list, **kw):
        calls.append(len(y))
        return model_fn(x, t, y, hw_list, **kw)

    model.forward = counting
    family_sample(model, labels, gens(), NiTSampling("ode", 3, 1.0, 0.0, 1.0, False, 64, 96, 32))
    assert calls == [2, 2, 2]
    calls.clear()
    family_sample(model, labels, gens(), NiTSampling("ode", 2, w, 0.0, 0.7, False, 64, 96, 32), size=(32, 64))
    assert calls == [2, 4]  # the size argument wins over the settings' height x width


def test_sample_settings_checks():
    cfg = load_config(DEBUG, ["sample.height=80"])
    with torch.device("meta"):
        model, _ = build_model(cfg)
    with pytest.raises(ValueError, match="80x96 must be a multiple of 32"):
        sample_settings(cfg, model)
    with pytest.raises(ValueError, match="in_channels 4 does not match tokenizer.kind dcae"):
        with torch.device("meta"):
            m4, _ = build_model(load_config(DEBUG, ["model.in_channels=4"]))
        sample_settings(load_config(DEBUG), m4)
    with pytest.raises(ValueError, match="must be >= 2 for --mode sde"):
        sample_settings(load_config(DEBUG, ["sample.mode=sde", "sample.steps=1"]))
    st = sample_settings(load_config(DEBUG, ["tokenizer.kind=pixels", "model.in_channels=3", "sample.height=8",
                                             "sample.width=12"]))
    assert st.downsample == 1 and (st.height, st.width) == (8, 12)
