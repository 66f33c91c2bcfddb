import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import extract_imagenet_feature as extract
from datasets.transforms import center_crop_arr, native_resolution_size
from tokenizer.dcae import DCAETokenizer, build_tiny_autoencoder_dc

SIZES = [(70, 40), (33, 64), (96, 96), (130, 65), (64, 31)]  # (w, h); the last is below 32 px high


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("extract_dcae")
    rng = np.random.default_rng(1)
    for c in range(2):
        d = root / "data" / "train" / f"n{c:08d}"
        d.mkdir(parents=True)
        for j, (w, h) in enumerate(SIZES):
            Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"x_{j}.png")
    (root / "data" / "train" / "n00000000" / "x_9.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    torch.manual_seed(0)
    build_tiny_autoencoder_dc().save_pretrained(str(root / "dc-ae-tiny"))
    return root


def _run(root, res, *extra):
    argv = ["--path", str(root / "data"), "--split", "train", "--tokenizer", "dcae", "--input_res", res,
            "--dcae_path", str(root / "dc-ae-tiny"), "--output", str(root / "out"), "--batch_size", "4",
            "--shard_size", "4", "--row_block", "4", "--num_workers", "0", "--no_progress", *extra]
    return extract.main(argv)


def _meta(root, tag):
    with open(root / "out" / "data_meta" / f"dc-ae-tiny_{tag}_meta.jsonl") as f:
        return [json.loads(l) for l in f]


def test_fixed_and_native_latents_and_meta(setup):
    root = setup
    assert _run(root, "64", "--max_shards", "1") == 3  # interrupted, then resumed below
    assert _run(root, "64") == 0
    assert _run(root, "native") == 0
    tok = DCAETokenizer.from_local_dir(str(root / "dc-ae-tiny"))

    fixed = _meta(root, "64x64")
    assert len(fixed) == 10 and fixed[0]["image_file"] == "n00000000/x_0.png"
    for m in fixed:
        assert (m["image_w"], m["image_h"], m["latent_w"], m["latent_h"]) == (64, 64, 2, 2)
        assert m["type"] == "fixed-64x64"
        d = load_file(root / "out" / "fixed-64x64" / m["latent_file"])
        assert d["latent"].shape == (2, 32, 2, 2) and d["latent"].dtype == torch.float32
        assert int(d["label"]) == int(m["image_file"][1:9])
    # latent = [encode(center crop), encode(its flip)] * scaling factor
    img = Image.open(root / "data" / "train" / "n00000000" / "x_2.png").convert("RGB")
    x = torch.from_numpy(center_crop_arr(img, 64).copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    want = tok.encode(torch.cat([x, x.flip(-1)]))
    got = load_file(root / "out" / "fixed-64x64" / "n00000000" / "x_2.safetensors")["latent"]
    assert torch.allclose(got, want, atol=1e-5)

    native = _meta(root, "nr")
    assert len(native) == 10
    by_name = {m["image_file"]: m for m in native}
    for j, (w, h) in enumerate(SIZES):
        m = by_name[f"n00000001/x_{j}.png"]
        nw, nh = native_resolution_size(w, h, 32)
        assert (m["ori_w"], m["ori_h"], m["image_w"], m["image_h"]) == (w, h, nw, nh)
        assert (m["latent_w"], m["latent_h"]) == (nw // 32, nh // 32) and m["type"] == "native-resolution"
        lat = load_file(root / "out" / "native-resolution" / m["latent_file"])["latent"]
        assert lat.shape == (2, 32, nh // 32, nw // 32)
    skipped = (root / "out" / "data_meta" / "dc-ae-tiny_nr_meta_skipped.txt").read_text().split()
    assert skipped == ["n00000000/x_9.png"]
    merged = (root / "out" / "data_meta" / "dc-ae-tiny_merge_meta.jsonl").read_text()
    assert merged == (root / "out" / "data_meta" / "dc-ae-tiny_nr_meta.jsonl").read_text()


def test_native_resolution_rule():
    assert native_resolution_size(580, 403) == (576, 384)  # README example
    assert native_resolution_size(500, 350) == (480, 320)
    assert native_resolution_size(20, 20) == (32, 32)
    w, h = native_resolution_size(4096, 3072)  # above 2048^2: rescaled to that area first
    assert w % 32 == 0 and h % 32 == 0 and w * h <= 2048 * 2048 and abs(w / h - 4 / 3) < 0.02


def test_center_crop_matches_adm_protocol():
    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 255, (300, 700, 3), dtype=np.uint8))
    out = center_crop_arr(img, 64)
    assert out.shape == (64, 64, 3) and out.dtype == np.uint8
    # by hand: 700x300 -> BOX 350x150 -> 175x75 (75 < 128 stops) -> BICUBIC to round(175*64/75)=149 x 64 -> crop
    ref = img.resize((350, 150), Image.BOX).resize((175, 75), Image.BOX).resize((149, 64), Image.BICUBIC)
    np.testing.assert_array_equal(out, np.asarray(ref)[:, 42:106])
