"""The NiT demo's data step: Fashion-MNIST-format images written as pixel-space NiT latents at several sizes (by the
references' cover-then-center-crop rule), with a data-meta the packing tool and the pack dataset read; the demo
recipe builds and samples at an unseen size."""
import gzip
import struct

import numpy as np
import torch
from PIL import Image

from datasets.lpfhp import pack_lengths
from datasets.nit_meta import read_data_meta, token_lengths
from datasets.nit_packs import NiTPackDataset
from engine.config import load_config
from models import build_model
from models.nit.family import family_sample, sample_settings


def _idx(path, arr: np.ndarray) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 8, arr.ndim) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes())


def test_demo_latents_at_three_sizes_pack_and_load(tmp_path):
    from scripts.nit_fmnist_data import main
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    _idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([3, 1, 4, 1, 5], dtype=np.uint8))
    out = tmp_path / "out"
    assert main(["--data", str(tmp_path), "--out", str(out), "--n-train", "4", "--sizes", "32x32,32x48,48x32"]) == 0
    entries = read_data_meta(str(out / "fmnist_merge_meta.jsonl"))
    assert len(entries) == 12
    assert sorted({(e["latent_h"], e["latent_w"], e["type"]) for e in entries}) == [
        (32, 32, "fixed-32x32"), (32, 48, "native-resolution"), (48, 32, "native-resolution")]
    lengths = token_lengths(entries, patch_size=4)
    assert sorted(set(lengths)) == [64, 96]
    packs = pack_lengths(lengths, 256, verbose=False)
    ds = NiTPackDataset(entries, packs, str(out / "latents"), 256, patch_size=4, flip=False)
    batch = ds.batch_for(0)
    assert batch["x"].shape[1:] == (1, 4, 4) and batch["x"].shape[0] == sum(lengths[i] for i in batch["indices"])
    # a stored latent is the image itself, brought to 32x48 as the references are (cover: bicubic 28 -> 48x48,
    # then the central 32 rows), one grey channel, in [-1, 1]
    from safetensors.torch import load_file
    e = next(e for e in entries if (e["latent_h"], e["latent_w"]) == (32, 48))
    k = int(e["image_file"].split("/")[1].split("_")[0])
    lat = load_file(str(out / "latents" / e["type"] / e["latent_file"]))["latent"]
    want = np.asarray(Image.fromarray(images[k]).resize((48, 48), resample=Image.BICUBIC))[8:40].astype(np.float32)
    assert lat.shape == (2, 1, 32, 48)
    torch.testing.assert_close(lat[0, 0], torch.from_numpy(want) / 127.5 - 1)
    torch.testing.assert_close(lat[1], lat[0].flip(-1))


def test_demo_recipe_samples_an_unseen_size():
    cfg = load_config("configs/demo/nit_fmnist.yaml", ["sample.steps=1"])
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    st = sample_settings(cfg, model)
    assert (st.downsample, model.patch_size, model.in_channels, model.num_classes) == (1, 4, 1, 10)
    out = family_sample(model.eval(), torch.tensor([0, 9]), [torch.Generator().manual_seed(i) for i in range(2)], st,
                        size=(48, 48))
    assert out.shape == (2, 1, 48, 48) and torch.isfinite(out).all()


def test_rgb_option_and_tokenizer_channels_checks(tmp_path):
    from engine.generate import build_tokenizer
    from scripts.nit_fmnist_data import main
    images = np.random.default_rng(1).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    _idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([0, 7], dtype=np.uint8))
    out = tmp_path / "rgb"
    assert main(["--data", str(tmp_path), "--out", str(out), "--n-train", "2", "--sizes", "32x32",
                 "--channels", "3"]) == 0
    from safetensors.torch import load_file
    lat = load_file(str(next((out / "latents").rglob("*.safetensors"))))["latent"]
    assert lat.shape == (2, 3, 32, 32) and torch.equal(lat[:, 0], lat[:, 2])
    # the recipe's grey tokenizer decodes 1-channel latents as they are; a 3-channel model is refused for it
    cfg = load_config("configs/demo/nit_fmnist.yaml")
    tok = build_tokenizer(cfg, "cpu")
    z = torch.rand(2, 1, 32, 48) * 2 - 1
    assert torch.equal(tok.decode(z), z)
    with torch.device("meta"):
        m3, _ = build_model(load_config("configs/demo/nit_fmnist.yaml", ["model.in_channels=3"]))
    import pytest
    with pytest.raises(ValueError, match="in_channels 3 does not match tokenizer.kind pixels"):
        sample_settings(cfg, m3)
    # refused when the config is read, before anything is built or trained: for another kind it would be ignored
    with pytest.raises(ValueError, match="'tokenizer.channels' applies to tokenizer.kind=pixels only, not 'dcae'"):
        load_config("configs/demo/nit_fmnist.yaml", ["tokenizer.kind=dcae"])
    for bad in ("0", "two"):
        with pytest.raises(ValueError, match="'tokenizer.channels' must be an integer >= 1"):
            load_config("configs/demo/nit_fmnist.yaml", [f"tokenizer.channels={bad}"])
