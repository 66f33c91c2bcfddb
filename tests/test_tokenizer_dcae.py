import pytest
import torch

from tokenizer import build_tokenizer
from tokenizer.dcae import DCAETokenizer, build_tiny_autoencoder_dc, load_autoencoder_dc


@pytest.fixture(scope="module")
def dcae_dir(tmp_path_factory):
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("dcae") / "dc-ae-tiny"
    build_tiny_autoencoder_dc().save_pretrained(str(d))
    return str(d)


def test_tiny_dcae_through_interface(dcae_dir):
    tok = build_tokenizer("dcae", ckpt=dcae_dir)
    assert tok.kind == "continuous" and tok.latent_channels == 32 and tok.downsample == 32
    assert tok.scaling_factor == pytest.approx(0.41407) and tok.in_channels == 3
    assert sum(p.numel() for p in tok.parameters()) == 177_763
    x = torch.rand(2, 3, 64, 96) * 2 - 1
    z = tok.encode(x)
    assert z.shape == (2, 32, 2, 3) and z.dtype == torch.float32
    assert torch.allclose(z, tok.ae.encode(x).latent * 0.41407)
    y = tok.decode(z)
    assert y.shape == (2, 3, 64, 96) and y.min() >= -1 and y.max() <= 1
    assert torch.allclose(y, tok.ae.decode(z / 0.41407).sample.clamp(-1, 1), atol=1e-6)
    tok.decode_one_by_one = True
    assert torch.allclose(tok.decode(z), y, atol=1e-5)
    with pytest.raises(ValueError, match="divisible by 32"):
        tok.encode(torch.zeros(1, 3, 48, 64))


def test_missing_dir_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="dc-ae-f32c32-sana-1.1-diffusers"):
        load_autoencoder_dc(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="config.json"):
        DCAETokenizer.from_local_dir(str(tmp_path))
    build_tiny_autoencoder_dc().save_pretrained(str(tmp_path / "ae"))
    assert load_autoencoder_dc(str(tmp_path / "ae")).config.latent_channels > 0  # a complete folder loads offline
    for f in (tmp_path / "ae").glob("diffusion_pytorch_model.*"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="has config.json but no weights"):
        load_autoencoder_dc(str(tmp_path / "ae"))
