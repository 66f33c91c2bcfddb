"""Evaluator end to end with random weights at a small input size (75 px, the smallest the network accepts)."""
import os
import zipfile

import numpy as np
import pytest
import torch

from metrics.evaluator import Evaluator
from metrics.features import FeatureCollector
from metrics.files import (Reference, SampleBatchWriter, iter_npz_rows, load_reference, save_stats,
                           write_sample_batch)
from metrics.formulas import (feature_stats, frechet_distance, frechet_distance_to_features, inception_score,
                              precision_recall)
from metrics.inception import FIDInception
from metrics.stats import iter_image_folder, stats_from_images

SIZE = 75


def images(n, seed, size=32):
    """Noise images with per-image brightness and contrast, so that features differ between images."""
    g = torch.Generator().manual_seed(seed)
    scale = torch.rand(n, 1, 1, 1, generator=g) * 220 + 30
    offset = torch.rand(n, 3, 1, 1, generator=g) * 120
    return (torch.rand(n, 3, size, size, generator=g) * scale + offset).clamp(0, 255).to(torch.uint8)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FIDInception().eval()


def make_eval(model, ref, **kw):
    kw = dict(dict(mode="adm", size=SIZE, batch_size=8, is_splits=3), **kw)
    return Evaluator(model, ref=ref, **kw)


@pytest.fixture(scope="module")
def ref_images():
    return images(10, seed=1).permute(0, 2, 3, 1).numpy()  # NHWC, as arr_0


def test_compute_equals_formulas_on_extracted_features(model, ref_images):
    ref_stats_src = images(12, seed=2)
    coll = FeatureCollector(model, "adm", size=SIZE)
    rf = coll.extract(ref_stats_src)
    mu, sigma = feature_stats(rf["pool3"])
    mu_s, sigma_s = feature_stats(rf["spatial"])
    ref = Reference(mu=mu, sigma=sigma, mu_s=mu_s, sigma_s=sigma_s, images=ref_images)
    ev = make_eval(model, ref)
    x = images(9, seed=3)
    ev.update(x[:5])
    ev.update(x[5:])
    got = ev.compute()
    f = coll.extract(x)
    ref_pool3 = coll.extract(torch.from_numpy(ref_images).permute(0, 3, 1, 2))["pool3"]
    want_is = inception_score(f["logits"], 3)
    want_pr = precision_recall(ref_pool3, f["pool3"])
    assert got["n"] == 9
    assert got["fid"] == pytest.approx(frechet_distance_to_features(f["pool3"], mu, sigma), rel=1e-8)
    assert got["sfid"] == pytest.approx(frechet_distance(*feature_stats(f["spatial"]), mu_s, sigma_s), rel=1e-8)
    assert (got["is"], got["is_std"]) == pytest.approx(want_is, rel=1e-9)
    assert (got["precision"], got["recall"]) == pytest.approx(want_pr)
    assert got["fid"] > 0 and got["sfid"] > 0 and got["is"] > 1


def test_reference_batch_without_stats_is_computed_from_arr_0(model, ref_images, tmp_path):
    batch = write_sample_batch(tmp_path / "ref_batch.npz", ref_images)
    x = images(6, seed=4)
    ev = make_eval(model, batch, want=("fid", "sfid", "pr"))
    ev.update(x)
    got = ev.compute()
    # The same statistics through stats_from_images -> save_stats -> load_reference
    nchw = torch.from_numpy(ref_images).permute(0, 3, 1, 2)
    batches = [nchw[:4], nchw[4:]]
    st = stats_from_images(batches, model, mode="adm", size=SIZE)
    path = save_stats(tmp_path / "stats.npz", st["mu"], st["sigma"], st["mu_s"], st["sigma_s"])
    assert sorted(np.load(path).files) == ["mu", "mu_s", "sigma", "sigma_s"]
    ev2 = make_eval(model, path, want=("fid", "sfid"))
    ev2.update(x)
    got2 = ev2.compute()
    assert got2["fid"] == pytest.approx(got["fid"], rel=1e-7)
    assert got2["sfid"] == pytest.approx(got["sfid"], rel=1e-7)


def test_uvit_stats_file_and_bad_reference_files(model, tmp_path):
    mu, sigma = np.zeros(2048), np.eye(2048)
    np.savez(tmp_path / "uvit.npz", mu=mu.astype(np.float32), sigma=sigma)
    with pytest.warns(UserWarning, match="sfid: .*mu_s.*pr: .*arr_0"):
        ev = make_eval(model, tmp_path / "uvit.npz")
    assert ev.want == ("fid", "is")
    with pytest.raises(ValueError, match="'sfid' is unavailable.*mu_s"):
        make_eval(model, tmp_path / "uvit.npz", want=("fid", "sfid"))
    np.savez(tmp_path / "nomu.npz", sigma=sigma[:4, :4])
    with pytest.raises(KeyError, match="nomu.npz: has only one of `mu`/`sigma`"):
        make_eval(model, tmp_path / "nomu.npz")
    np.savez(tmp_path / "other.npz", mean=mu)
    with pytest.raises(KeyError, match=r"other.npz: not a reference file: needs `mu` .*\['mean'\]"):
        load_reference(tmp_path / "other.npz")
    np.savez(tmp_path / "dim.npz", mu=np.zeros(100), sigma=np.eye(100))
    with pytest.raises(ValueError, match="dim.npz: `mu` has 100 dims but .* pool3 features have 2048"):
        make_eval(model, tmp_path / "dim.npz", want=("fid",))
    np.savez(tmp_path / "sdim.npz", mu=mu, sigma=sigma, mu_s=np.zeros(2023), sigma_s=np.eye(2023))
    with pytest.raises(ValueError, match="`mu_s` has 2023 dims but .* spatial features have 63"):
        make_eval(model, tmp_path / "sdim.npz", want=("sfid",))
    np.savez(tmp_path / "shape.npz", mu=mu, sigma=np.eye(5))
    with pytest.raises(ValueError, match=r"`sigma` \[D, D\]"):
        load_reference(tmp_path / "shape.npz")
    with pytest.raises(FileNotFoundError, match="missing.npz"):
        load_reference(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="no reference given"):
        make_eval(model, None, want=("fid",))


def test_is_unavailable_without_fc(ref_images):
    torch.manual_seed(0)
    m = FIDInception().eval()
    m.has_fc = False
    with pytest.warns(UserWarning, match="is: .*no fc layer"):
        ev = make_eval(m, Reference(images=ref_images), want=None)
    assert "is" not in ev.want and "no fc layer" in ev.unavailable["is"]
    with pytest.raises(ValueError, match="'is' is unavailable.*no fc layer"):
        make_eval(m, None, want=("is",))


def test_state_save_load_resume_equals_uninterrupted(model, ref_images, tmp_path):
    ref = Reference(images=ref_images)
    x = images(12, seed=5)
    full = make_eval(model, ref)
    for s in range(0, 12, 4):
        full.update(x[s:s + 4])
    want = full.compute()

    part = make_eval(model, ref)
    part.update(x[:4])
    part.update(x[4:8])
    part.save(tmp_path / "eval_state.pt")
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    resumed = make_eval(model, ref)
    assert resumed.load(tmp_path / "eval_state.pt") == 8
    resumed.update(x[8:])
    assert resumed.compute() == want

    again = make_eval(model, ref)
    again.load_state_dict(part.state_dict())
    again.update(x[8:])
    assert again.compute() == want
    with pytest.raises(ValueError, match="mode='adm'.*'pytorch-fid'"):
        make_eval(model, ref, mode="pytorch-fid").load(tmp_path / "eval_state.pt")
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        resumed.load(tmp_path / "nothing.pt")


def test_index_orders_samples_and_is_checked(model):
    x = images(8, seed=6)
    c = FeatureCollector(model, "adm", ("pool3", "logits"), size=SIZE)
    c.update(x[4:], index=range(4, 8))
    c.update(x[:4], index=torch.arange(4))
    g = c.gather()
    plain = FeatureCollector(model, "adm", ("pool3", "logits"), size=SIZE)
    plain.update(x)
    torch.testing.assert_close(g["pool3"], plain.gather()["pool3"], rtol=1e-5, atol=1e-6)
    assert g["index"].tolist() == list(range(8))
    with pytest.raises(ValueError, match="for every batch or for none"):
        c.update(x[:1])
    c.update(x[:1], index=[3])
    with pytest.raises(ValueError, match="duplicate sample indices"):
        c.gather()
    with pytest.raises(ValueError, match="index has 2 entries for 1 images"):
        c.update(x[:1], index=[9, 10])


def test_options_dtype_channels_last_and_float_input(model):
    x = images(4, seed=7)
    base = FeatureCollector(model, "pytorch-fid", size=SIZE).extract(x)
    cl = FeatureCollector(model, "pytorch-fid", size=SIZE, channels_last=True).extract(x)
    bf = FeatureCollector(model, "pytorch-fid", size=SIZE, dtype="bf16", channels_last=True).extract(x)
    fl = FeatureCollector(model, "pytorch-fid", size=SIZE).extract(x.float() / 255)
    model.to(memory_format=torch.contiguous_format)
    for k in base:
        torch.testing.assert_close(cl[k], base[k], rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fl[k], base[k], rtol=1e-4, atol=1e-4)
        assert bf[k].dtype == torch.float32 and torch.isfinite(bf[k]).all()
        assert ((bf[k] - base[k]).norm() / base[k].norm()) < 0.2
    with pytest.raises(ValueError, match="dtype must be one of"):
        FeatureCollector(model, "adm", dtype="int8")


def test_sample_batch_and_streamed_rows(tmp_path):
    nchw = images(5, seed=8)
    labels = torch.tensor([3, 1, 4, 1, 5])
    path = write_sample_batch(tmp_path / "samples.npz", nchw, labels)
    with np.load(path) as f:
        assert f["arr_0"].shape == (5, 32, 32, 3) and f["arr_0"].dtype == np.uint8
        np.testing.assert_array_equal(f["arr_0"], nchw.permute(0, 2, 3, 1).numpy())
        np.testing.assert_array_equal(f["arr_1"], labels.numpy())
    rows = list(iter_npz_rows(path, "arr_0", start=1, stop=5, batch=3))
    assert [r.shape[0] for r in rows] == [3, 1]
    np.testing.assert_array_equal(np.concatenate(rows), nchw.permute(0, 2, 3, 1).numpy()[1:5])
    np.savez_compressed(tmp_path / "comp.npz", arr_0=np.asarray(nchw.permute(0, 2, 3, 1)))
    np.testing.assert_array_equal(np.concatenate(list(iter_npz_rows(tmp_path / "comp.npz", "arr_0", 2))),
                                  nchw.permute(0, 2, 3, 1).numpy()[2:])
    gray = write_sample_batch(tmp_path / "gray.npz", nchw[:, :1])
    assert np.load(gray)["arr_0"].shape == (5, 32, 32, 3)
    with pytest.raises(ValueError, match="must be uint8"):
        write_sample_batch(tmp_path / "bad.npz", nchw.float())
    with pytest.raises(KeyError, match="no array `arr_1`"):
        list(iter_npz_rows(tmp_path / "comp.npz", "arr_1"))
    assert zipfile.is_zipfile(path) and sorted(os.listdir(tmp_path)) == ["comp.npz", "gray.npz", "samples.npz"]

    with SampleBatchWriter(tmp_path / "streamed.npz") as w:
        w.add(nchw[:2], labels[:2])
        w.add(nchw[2:].permute(0, 2, 3, 1).numpy(), labels[2:])
        with pytest.raises(ValueError, match="labels for every batch"):
            w.add(nchw[:1])
    with np.load(tmp_path / "streamed.npz") as f:
        np.testing.assert_array_equal(f["arr_0"], nchw.permute(0, 2, 3, 1).numpy())
        np.testing.assert_array_equal(f["arr_1"], labels.numpy())
    assert load_reference(tmp_path / "streamed.npz").n_images == 5
    with pytest.raises(RuntimeError, match="boom"):
        with SampleBatchWriter(tmp_path / "failed.npz") as w:
            w.add(nchw)
            raise RuntimeError("boom")
    assert sorted(os.listdir(tmp_path)) == ["comp.npz", "gray.npz", "samples.npz", "streamed.npz"]


def test_image_folder_batches_and_stats_script(model, tmp_path):
    from PIL import Image

    folder = tmp_path / "imgs" / "sub"
    folder.mkdir(parents=True)
    arrs = images(5, seed=9).permute(0, 2, 3, 1).numpy()
    for i, a in enumerate(arrs[:3]):
        Image.fromarray(a).save(folder / f"a{i}.png")
    Image.fromarray(arrs[3]).resize((40, 40)).save(folder / "b3.png")
    Image.fromarray(arrs[4][..., 0]).save(folder / "c4.png")  # grayscale file -> RGB
    (folder / "notes.txt").write_text("not an image")
    batches = list(iter_image_folder(tmp_path / "imgs", batch_size=2))
    assert [tuple(b.shape) for b in batches] == [(2, 3, 32, 32), (1, 3, 32, 32), (1, 3, 40, 40), (1, 3, 32, 32)]
    assert torch.equal(batches[0][1], torch.from_numpy(arrs[1]).permute(2, 0, 1))

    import scripts.make_fid_stats as mk

    weights = tmp_path / "w.pth"
    torch.save({k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}, weights)
    out = tmp_path / "out" / "stats.npz"
    mk.main(["--folder", str(tmp_path / "imgs"), "--out", str(out), "--weights", str(weights), "--mode", "adm",
             "--batch-size", "2", "--channels-last"])
    with np.load(out) as f:
        assert f["mu"].shape == (2048,) and f["sigma"].shape == (2048, 2048) and f["mu_s"].shape == (2023,)
        direct = stats_from_images(iter_image_folder(tmp_path / "imgs", 2), model, mode="adm")
        np.testing.assert_allclose(f["mu"], direct["mu"], rtol=1e-4, atol=1e-5)
    with pytest.raises(FileNotFoundError, match="no images"):
        list(iter_image_folder(tmp_path / "out"))
