"""The two preprocessing pipelines and input validation."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metrics.preprocess import check_images, preprocess, tf1_resize_bilinear


def tf1_reference(img: np.ndarray, out: int) -> np.ndarray:
    """Explicit loops of the TF1 rule: source = i * (in / out) in float32, upper neighbour clamped, x then y lerp."""
    h, w = img.shape
    sh, sw = np.float32(h / out), np.float32(w / out)
    res = np.zeros((out, out), np.float64)
    for i in range(out):
        y = np.float32(i) * sh
        y0 = int(np.floor(y))
        y1 = min(y0 + 1, h - 1)
        fy = float(y - y0)
        for j in range(out):
            x = np.float32(j) * sw
            x0 = int(np.floor(x))
            x1 = min(x0 + 1, w - 1)
            fx = float(x - x0)
            top = img[y0, x0] + (img[y0, x1] - img[y0, x0]) * fx
            bot = img[y1, x0] + (img[y1, x1] - img[y1, x0]) * fx
            res[i, j] = top + (bot - top) * fy
    return res


@pytest.mark.parametrize("h,w,out", [(7, 5, 11), (13, 9, 5), (32, 32, 75)])
def test_tf1_resize_matches_explicit_rule(h, w, out):
    img = np.random.default_rng(h).integers(0, 256, (h, w)).astype(np.float64)
    got = tf1_resize_bilinear(torch.from_numpy(img).float()[None, None], out)[0, 0].double().numpy()
    np.testing.assert_allclose(got, tf1_reference(img, out), atol=1e-3)


def test_tf1_resize_differs_from_half_pixel_resize_and_is_identity_at_same_size():
    x = torch.rand(1, 1, 8, 8) * 255
    assert torch.equal(tf1_resize_bilinear(x, 8), x)
    torch_style = F.interpolate(x, size=(13, 13), mode="bilinear", align_corners=False)
    assert (tf1_resize_bilinear(x, 13) - torch_style).abs().max() > 1.0
    assert torch.equal(tf1_resize_bilinear(x, 13)[..., 0, 0], x[..., 0, 0])  # source 0 maps to pixel 0


def test_adm_mode_normalisation_and_grayscale():
    img = torch.randint(0, 256, (2, 1, 299, 299), dtype=torch.uint8)
    out = preprocess(img, "adm")
    assert out.shape == (2, 3, 299, 299) and out.dtype == torch.float32
    want = (img.float() - 128) / 128
    assert torch.equal(out, want.expand(-1, 3, -1, -1))


def test_pytorch_fid_mode_uint8_and_float_agree():
    img = torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8)
    out = preprocess(img, "pytorch-fid")
    want = 2 * F.interpolate(img.float() / 255, size=(299, 299), mode="bilinear", align_corners=False) - 1
    torch.testing.assert_close(out, want, rtol=0, atol=1e-6)
    torch.testing.assert_close(preprocess(img.float() / 255, "pytorch-fid"), out, rtol=0, atol=1e-6)
    assert preprocess(img, "pytorch-fid", size=75).shape == (2, 3, 75, 75)
    # identity resize at 299: only 2x - 1
    big = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8)
    torch.testing.assert_close(preprocess(big, "pytorch-fid"), big.float() / 255 * 2 - 1, rtol=0, atol=1e-6)


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="unknown preprocessing mode"):
        check_images(torch.zeros(1, 3, 4, 4, dtype=torch.uint8), "clean-fid")
    with pytest.raises(TypeError, match="uint8 .* or float"):
        preprocess(torch.zeros(1, 3, 4, 4, dtype=torch.int32), "pytorch-fid")
    with pytest.raises(ValueError, match=r"\[0, 1\].*\[-1, 1\]"):
        preprocess(torch.full((1, 3, 4, 4), -0.5), "pytorch-fid")
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        preprocess(torch.full((1, 3, 4, 4), float("nan")), "pytorch-fid")
    with pytest.raises(TypeError, match="'adm' expects uint8"):
        preprocess(torch.rand(1, 3, 4, 4), "adm")
    with pytest.raises(ValueError, match="channels last"):
        preprocess(torch.zeros(1, 4, 4, 3, dtype=torch.uint8), "adm")
    with pytest.raises(ValueError, match=r"\[B, 3\|1, H, W\]"):
        preprocess(torch.zeros(3, 4, 4, dtype=torch.uint8), "adm")
    with pytest.raises(TypeError, match="torch.Tensor"):
        preprocess(np.zeros((1, 3, 4, 4), np.uint8), "adm")
