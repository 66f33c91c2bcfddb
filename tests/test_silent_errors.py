"""Settings that used to be accepted and silently give a wrong result: each now does what it says or is refused."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import train
from core.loading import load_file
from tests.helpers import ROOT, write_random_fid_weights

NAT = "configs/debug/nat_synthetic.yaml"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A trained debug NAT (4x4 tokens), a random debug VQ (downsample 4), two sets of FID weights, stats."""
    from tokenizer.demo_vq import build_demo_vq
    d = tmp_path_factory.mktemp("silent")
    assert train.main(["--config", NAT, f"output_dir={d / 'nat'}", "train.steps=2", "train.ckpt_every=2",
                       "model.codebook_size=32", "data.synthetic_vocab=32"]) == 0
    torch.manual_seed(0)
    torch.save({"model": build_demo_vq("debug").state_dict(), "family": "demo_vq",
                "config": {"model": {"flavour": "debug"}}}, d / "vq.pt")
    write_random_fid_weights(d / "inc_a.pth", seed=0)
    write_random_fid_weights(d / "inc_b.pth", seed=1)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(2048, 16)) * 0.1
    np.savez(d / "ref.npz", mu=rng.normal(size=2048) * 0.1, sigma=a @ a.T + 1e-3 * np.eye(2048))
    return d


def _eval(world, out, *extra):
    argv = ["--config", NAT, "--mode", "eval", f"output_dir={out}", f"eval.pretrained_path={world / 'nat'}/"
            "checkpoints/step_0000002.pt", "model.codebook_size=32", "tokenizer.kind=demo_vq",
            f"tokenizer.ckpt={world / 'vq.pt'}", f"eval.ref_stats={world / 'ref.npz'}", "eval.n=4",
            "eval.batch_size=2", "eval.inception_dtype=fp32", *extra]
    assert train.main(argv) == 0
    found = sorted((out / "eval").glob("*/result.json"), key=lambda p: p.stat().st_mtime)
    return json.loads(found[-1].read_text()), found[-1].parent


def test_changing_the_fid_network_is_not_served_from_the_cache(world, tmp_path):
    a, _ = _eval(world, tmp_path / "run", f"eval.inception_weights={world / 'inc_a.pth'}")
    b, _ = _eval(world, tmp_path / "run", f"eval.inception_weights={world / 'inc_b.pth'}")
    fresh, _ = _eval(world, tmp_path / "fresh", f"eval.inception_weights={world / 'inc_b.pth'}")
    assert b["fid"] == pytest.approx(fresh["fid"], rel=1e-9) and b["fid"] != pytest.approx(a["fid"], rel=1e-6)
    # a metric added on resume needs features the cached units do not hold: computed, not a crash
    c, _ = _eval(world, tmp_path / "run", f"eval.inception_weights={world / 'inc_b.pth'}", "eval.metrics=[fid,is]",
                 "eval.is_splits=2")
    assert c["fid"] == pytest.approx(fresh["fid"], rel=1e-9) and math.isfinite(c["is"]) and len(c["is_splits"]) == 2


def test_random_tokens_use_the_generators_token_grid(world, tmp_path):
    # data.image_size (a Fashion-MNIST key, 32 px -> 8x8 codes) used to set the grid; the NAT samples 4x4 codes
    _, udir = _eval(world, tmp_path, f"eval.inception_weights={world / 'inc_a.pth'}", "eval.source=random_tokens",
                    "eval.save_png=2")
    from PIL import Image
    assert np.asarray(Image.open(udir / "png" / "000000.png")).shape == (16, 16)


def test_reconstructions_of_an_image_folder(world, tmp_path):
    from PIL import Image
    root = tmp_path / "val"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    from tokenizer.demo_vq import build_demo_vq
    torch.manual_seed(0)
    torch.save({"model": build_demo_vq("debug", in_channels=3).state_dict(), "family": "demo_vq",
                "config": {"model": {"flavour": "debug", "in_channels": 3}}}, tmp_path / "vq3.pt")
    res, udir = _eval(world, tmp_path / "rec", f"eval.inception_weights={world / 'inc_a.pth'}",
                      "eval.source=reconstructions", f"eval.ref_images={root}", "data.input_res=32",
                      f"tokenizer.ckpt={tmp_path / 'vq3.pt'}", "eval.save_png=4")
    from PIL import Image
    assert math.isfinite(res["fid"]) and sorted(p.name for p in (udir / "png").iterdir())[-1] == "000003.png"
    assert np.asarray(Image.open(udir / "png" / "000000.png")).shape == (32, 32, 3)


def test_input_res_sets_the_autonat_grid():
    from engine.config import load_config
    from models import build_model
    for res, side in ((256, 16), (512, 32)):
        cfg = load_config("configs/AutoNAT_L.yaml", [f"data.input_res={res}"])
        with torch.device("meta"):
            model, _ = build_model(cfg)
        assert model.grid == (side, side) and f"imagenet{res}" in cfg.data.path and f"imagenet{res}" in \
            cfg.eval.ref_stats


def test_pretrain_with_pretrained_path_starts_from_those_weights(world, tmp_path):
    src = world / "nat" / "checkpoints" / "step_0000002.pt"
    assert train.main(["--config", NAT, "--mode", "pretrain", f"--pretrained_path={src}", f"output_dir={tmp_path}",
                       "model.codebook_size=32", "data.synthetic_vocab=32", "train.steps=1", "train.lr=0",
                       "train.ckpt_every=1"]) == 0
    got, want = load_file(tmp_path / "checkpoints" / "step_0000001.pt")["model"], load_file(src)["ema"]
    assert all(torch.equal(got[k], want[k]) for k in want)


def test_decode_batch_is_honoured(world):
    from engine.generate import decode
    from tokenizer import build_tokenizer
    tok = build_tokenizer("demo_vq", ckpt=str(world / "vq.pt"))
    codes = torch.randint(0, tok.codebook_size, (5, 8, 8), generator=torch.Generator().manual_seed(0))
    calls = []
    orig = tok._decode
    tok._decode = lambda z: calls.append(len(z)) or orig(z)
    whole = decode(tok, codes, 0)
    parts = decode(tok, codes, 2)
    assert calls == [5, 2, 2, 1] and torch.allclose(whole, parts, atol=1e-5)


def test_non_finite_weights_are_never_checkpointed(tmp_path):
    p = subprocess.run([sys.executable, "train.py", "--config", NAT, "--mode", "pretrain", f"output_dir={tmp_path}",
                        "--lr", "1e30", "--log_interval", "3", "--save_interval", "2", "train.steps=8",
                        "train.warmup_steps=0"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and last.startswith("error: non-finite") and "Traceback" not in p.stderr
    for ck in (tmp_path / "checkpoints").glob("step_*.pt"):
        state = load_file(ck)
        assert all(torch.isfinite(t).all() for part in ("model", "ema") for t in state[part].values()
                   if t.is_floating_point()), ck


def test_knobs_a_strategy_file_would_ignore_are_refused(capsys):
    rc = train.main(["--config", "configs/AutoNAT_L.yaml", "--mode", "eval", "--pretrained_path", "absent.pth",
                     "--cfg_scale", "3", "device=cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and err[0].startswith("error: sample.cfg_scale=3")
    assert "has no effect with sample.strategy=configs/AutoNAT_L-T8_strategy.yaml" in err[0]
