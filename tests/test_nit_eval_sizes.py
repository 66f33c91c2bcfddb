"""Evaluation at any H x W: the cover-then-center-crop rule, reference statistics cached per size (never a stale
file), and --mode eval sampling several sizes in one packed batch with images and FIDs per size, the same on 1 and
2 processes and the same images as a run of one size."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

from datasets.cover_crop import cover_center_crop
from datasets.transforms import center_crop_arr
from tests.helpers import run, torchrun_cmd
from tests.test_data import write_idx


def test_cover_crop_square_is_adm_center_crop_and_rectangles_follow_the_rule():
    rng = np.random.default_rng(0)
    for w, h, s in [(580, 403, 256), (120, 90, 32), (28, 28, 48), (300, 1000, 64)]:
        img = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        np.testing.assert_array_equal(cover_center_crop(img, s, s), center_crop_arr(img, s))
    grey = Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8))
    # 28x28 -> 32 rows x 48 columns: scale 48/28 -> 48x48 (bicubic), rows 8..40 kept
    want = np.asarray(grey.resize((48, 48), resample=Image.BICUBIC))[8:40]
    np.testing.assert_array_equal(cover_center_crop(grey, 32, 48), want)
    want = np.asarray(grey.resize((48, 48), resample=Image.BICUBIC))[:, 8:40]
    np.testing.assert_array_equal(cover_center_crop(grey, 48, 32), want)
    # 400 wide x 100 high -> 48x48: covering needs 192x48 (s = 0.48 <= 1/2): BOX-halved once to 200x50, then
    # bicubic to 192x48, columns 72..120 kept; -> 32x48: halved once too, bicubic to 128x32, columns 40..88
    big = Image.fromarray(rng.integers(0, 256, (100, 400), dtype=np.uint8))
    half = big.resize((200, 50), resample=Image.BOX)
    np.testing.assert_array_equal(cover_center_crop(big, 48, 48),
                                  np.asarray(half.resize((192, 48), resample=Image.BICUBIC))[:, 72:120])
    np.testing.assert_array_equal(cover_center_crop(big, 32, 48),
                                  np.asarray(half.resize((128, 32), resample=Image.BICUBIC))[:, 40:88])


@pytest.fixture(scope="module")
def fmnist(tmp_path_factory):
    root = tmp_path_factory.mktemp("fmnist")
    rng = np.random.default_rng(1)
    for split, n in (("train", 16), ("t10k", 6)):
        write_idx(root / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", (np.arange(n) % 10).astype(np.uint8))
    return root


def _cfg(tmp_path, fmnist, fid_weights, *extra):
    from engine.config import load_config
    return load_config("configs/demo/nit_fmnist.yaml", [
        f"output_dir={tmp_path / 'out'}", "eval.ref_images=fmnist-test", f"eval.ref_images_path={fmnist}",
        "eval.ref_n=4", "eval.batch_size=2", f"eval.inception_weights={fid_weights}", "eval.inception_dtype=fp32",
        *extra])


def test_reference_stats_per_size_are_cached_and_never_stale(tmp_path, fmnist, fid_weights):
    from engine.evaluate import ensure_ref_stats, reference_dataset
    from metrics import load_reference
    cfg = _cfg(tmp_path, fmnist, fid_weights, f"eval.ref_stats={tmp_path / 'refs'}/")
    ds = reference_dataset(cfg, (32, 48))
    b = ds.get_batch(torch.arange(2))["image"]
    assert b.shape == (2, 3, 32, 48)
    from datasets.fmnist import load_fmnist
    raw = load_fmnist(fmnist, "test")[0]
    want = torch.from_numpy(np.array(cover_center_crop(Image.fromarray(raw[1]), 32, 48))).float() / 127.5 - 1
    torch.testing.assert_close(b[1, 2], want)
    p1 = ensure_ref_stats(cfg, "cpu", size=(32, 48), multi=True)
    p2 = ensure_ref_stats(cfg, "cpu", size=(48, 32), multi=True)
    assert "32x48" in p1 and "48x32" in p2 and "fmnist-test" in p1 and p1 != p2
    assert not np.allclose(load_reference(p1).mu, load_reference(p2).mu)
    mtime = (tmp_path / "refs" / p1.split("/")[-1]).stat().st_mtime_ns
    assert ensure_ref_stats(cfg, "cpu", size=(32, 48)) == p1  # cached
    assert (tmp_path / "refs" / p1.split("/")[-1]).stat().st_mtime_ns == mtime
    # anything that changes the statistics changes the file: image count, Inception dtype
    p3 = ensure_ref_stats(_cfg(tmp_path, fmnist, fid_weights, f"eval.ref_stats={tmp_path / 'refs'}/",
                               "eval.ref_n=3"), "cpu", size=(32, 48))
    assert p3 != p1 and "_n3_" in p3
    # null: cached under <output_dir>/ref_stats
    p4 = ensure_ref_stats(_cfg(tmp_path, fmnist, fid_weights), "cpu", size=(32, 48))
    assert p4.startswith(str(tmp_path / "out" / "ref_stats")) and p4.endswith(p1.split("/")[-1])
    # an explicit file made from other settings is refused, not reused
    one = tmp_path / "one.npz"
    assert ensure_ref_stats(_cfg(tmp_path, fmnist, fid_weights, f"eval.ref_stats={one}"), "cpu", (32, 48)) == str(one)
    with pytest.raises(ValueError, match="made with other settings .*size"):
        ensure_ref_stats(_cfg(tmp_path, fmnist, fid_weights, f"eval.ref_stats={one}"), "cpu", (48, 32))
    with pytest.raises(ValueError, match="names one file, but this run evaluates several sizes"):
        ensure_ref_stats(_cfg(tmp_path, fmnist, fid_weights, f"eval.ref_stats={one}"), "cpu", (32, 48), multi=True)


def test_mixed_size_pack_equals_each_size_alone():
    from engine.config import load_config
    from models import build_model
    from models.nit.family import family_sample, sample_settings
    cfg = load_config("configs/demo/nit_fmnist.yaml", ["sample.steps=2", "sample.mode=sde", "model.depth=1"])
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)  # a fresh NiT predicts 0 everywhere: no test of attention
    st = sample_settings(cfg, model.eval())
    sizes = [(32, 32), (32, 48), (48, 32), (48, 48)]
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(4)]  # noqa: E731
    labels = torch.tensor([0, 3, 5, 9])
    calls = []
    hook = model.register_forward_hook(lambda m, a, o: calls.append(a[3].shape[0]))
    mixed = family_sample(model, labels, gens(), st, size=sizes)
    hook.remove()
    assert calls == [4, 8]  # SDE grid [1, 0.04, 0]: t=1 unguided, t=0.04 guided (doubled); all sizes in one call
    for i, s in enumerate(sizes):
        alone = family_sample(model, labels[i:i + 1], gens()[i:i + 1], st, size=s)
        assert mixed[i].shape == (1, *s)
        torch.testing.assert_close(mixed[i], alone[0], atol=1e-5, rtol=0)


def _world(tmp_path, fmnist, fid_weights):
    """A demo-flavour NiT with random (non-zero) weights as a step checkpoint, and the eval command."""
    from engine.config import load_config
    from engine.optim import build_optimizer, make_ema
    from engine.trainer import save_checkpoint
    from models import build_model
    cfg = load_config("configs/demo/nit_fmnist.yaml", ["model.depth=1"])
    torch.manual_seed(0)
    model, fam = build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    ck = tmp_path / "w.pt"
    save_checkpoint(ck, model, make_ema(model), build_optimizer(model, cfg.train), 5, fam.name, cfg)
    return ["--config", "configs/demo/nit_fmnist.yaml", "--mode", "eval", "model.depth=1", f"eval.pretrained_path={ck}",
            "eval.ref_images=fmnist-test", f"eval.ref_images_path={fmnist}", "eval.ref_n=6", "eval.n=4",
            "eval.batch_size=2", f"eval.inception_weights={fid_weights}", "eval.inception_dtype=fp32",
            "eval.save_png=-1", "sample.steps=2", "sample.grid_classes=2", "sample.grid_per_class=2",
            f"eval.ref_stats={tmp_path / 'refs'}/", "device=cpu"]


def _pngs(folder):
    return {f"{d.name}/{f.name}": np.asarray(Image.open(f)) for d in sorted(folder.iterdir()) if d.is_dir()
            for f in sorted(d.glob("*.png"))}


@pytest.mark.slow
def test_multi_size_eval_one_run_same_on_one_and_two_processes(tmp_path, fmnist, fid_weights):
    cmd = _world(tmp_path, fmnist, fid_weights)
    sizes = "sample.sizes=[32x32,32x48,48x32]"
    outs = {}
    for nproc in (1, 2):
        out = tmp_path / f"w{nproc}"
        run(torchrun_cmd(nproc, *cmd[2:], "--config", cmd[1], sizes, f"output_dir={out}"))
        (tag,) = (out / "eval").iterdir()
        outs[nproc] = (_pngs(tag / "png"), json.loads((tag / "result.json").read_text()), out)
    (p1, r1, o1), (p2, r2, _) = outs[1], outs[2]
    assert sorted(p1) == sorted(p2) == [f"{s}/{i:06d}.png" for s in ("32x32", "32x48", "48x32") for i in range(4)]
    assert all(np.array_equal(p1[k], p2[k]) for k in p1)
    assert p1["32x48/000002.png"].shape == (32, 48) and p1["48x32/000002.png"].shape == (48, 32)  # grey PNGs
    assert set(r1["sizes"]) == {"32x32", "32x48", "48x32"}
    for s in r1["sizes"]:
        assert r1["sizes"][s]["n"] == 4 and r1["sizes"][s]["fid"] == pytest.approx(r2["sizes"][s]["fid"], rel=1e-5)
        assert (o1 / f"samples_{s}.png").is_file()
        assert s in r1["provenance"]["ref_stats"][s]
    # each size's images are those of a run of that size alone
    out = tmp_path / "alone"
    run(torchrun_cmd(1, *cmd[2:], "--config", cmd[1], "sample.height=32", "sample.width=48", f"output_dir={out}"))
    (tag,) = (out / "eval").iterdir()
    alone = {f.name: np.asarray(Image.open(f)) for f in sorted((tag / "png").glob("*.png"))}
    assert sorted(alone) == [f"{i:06d}.png" for i in range(4)]
    for name, a in alone.items():
        assert np.abs(a.astype(int) - p1[f"32x48/{name}"].astype(int)).max() <= 1
    res = json.loads((tag / "result.json").read_text())
    assert res["fid"] == pytest.approx(r1["sizes"]["32x48"]["fid"], rel=1e-3)
