"""FIDInception as a pytorch-fid / torch-fidelity drop-in: every feature in one forward, checked against torchvision's
Inception3 run layer by layer with the TF pooling patches; hooks fire on every sub-module; pool3/logits/spatial are
unchanged from the previous forward."""
import types

import pytest
import torch
import torch.nn.functional as F

from metrics.inception import FEATURES, PYTORCH_FID_DIMS, FIDInception, feature_dims

SIZE = 83


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return FIDInception().eval()


@pytest.fixture(scope="module")
def x():
    g = torch.Generator().manual_seed(5)
    return torch.rand(2, 3, SIZE, SIZE, generator=g) * 2 - 1


def _old_forward(m: FIDInception, x: torch.Tensor) -> dict:
    """The forward before the restructuring (sFID tap taken inside Mixed_6d by a direct method call), restated."""
    x = m.Conv2d_2b_3x3(m.Conv2d_2a_3x3(m.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, 3, stride=2)
    x = F.max_pool2d(m.Conv2d_4a_3x3(m.Conv2d_3b_1x1(x)), 3, stride=2)
    x = m.Mixed_6c(m.Mixed_6b(m.Mixed_6a(m.Mixed_5d(m.Mixed_5c(m.Mixed_5b(x))))))
    b = m.Mixed_6d
    tap = b.branch1x1(x)
    x = torch.cat([tap, b.branch7x7_3(b.branch7x7_2(b.branch7x7_1(x))),
                   b.branch7x7dbl_5(b.branch7x7dbl_4(b.branch7x7dbl_3(b.branch7x7dbl_2(b.branch7x7dbl_1(x))))),
                   b.branch_pool(F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False))], 1)
    x = m.Mixed_7c(m.Mixed_7b(m.Mixed_7a(m.Mixed_6e(x))))
    pool3 = x.mean(dim=(2, 3), dtype=torch.float32)
    return {"pool3": pool3, "logits": pool3 @ m.fc.weight.float().t(),
            "spatial": tap[:, :7].permute(0, 2, 3, 1).reshape(tap.shape[0], -1).float()}


def test_default_outputs_unchanged_from_previous_forward(model, x):
    with torch.inference_mode():
        new, old = model(x), _old_forward(model, x)
    assert list(new) == ["pool3", "logits", "spatial"]
    for k in old:
        assert torch.equal(new[k], old[k]), k
    # Sums printed by the previous code on these seeded weights and inputs (1 thread).
    want = {"pool3": 272.40729993079094, "logits": 6.800208866596222, "spatial": 87.19332992983982}
    for k, v in want.items():
        assert new[k].double().sum().item() == pytest.approx(v, rel=1e-5), k


def _torchvision_features(model: FIDInception, x: torch.Tensor) -> dict:
    """Every feature from torchvision's Inception3 holding our weights, its layers called one by one in
    pytorch-fid's block order, with the 2015-graph pooling (TF averages; max pool in Mixed_7c) patched in."""
    tvi = pytest.importorskip("torchvision.models.inception")
    tv = tvi.Inception3(num_classes=1008, aux_logits=False, init_weights=False).eval()
    tv.load_state_dict(model.state_dict(), strict=True)
    state = {"max": False}

    def avg_pool2d(t, kernel_size, stride, padding):
        if state["max"]:
            return F.max_pool2d(t, kernel_size, stride, padding)
        return F.avg_pool2d(t, kernel_size, stride, padding, count_include_pad=False)

    patched = types.SimpleNamespace(**{n: getattr(F, n) for n in dir(F) if not n.startswith("__")})
    patched.avg_pool2d = avg_pool2d
    taps = []
    hook = tv.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, o: taps.append(o))
    orig, tvi.F = tvi.F, patched
    try:
        with torch.inference_mode():
            h = tv.maxpool1(tv.Conv2d_2b_3x3(tv.Conv2d_2a_3x3(tv.Conv2d_1a_3x3(x))))
            out = {"block64": F.adaptive_avg_pool2d(h, (1, 1)).squeeze(-1).squeeze(-1)}
            h = tv.maxpool2(tv.Conv2d_4a_3x3(tv.Conv2d_3b_1x1(h)))
            out["block192"] = F.adaptive_avg_pool2d(h, (1, 1)).squeeze(-1).squeeze(-1)
            for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
                         "Mixed_6e"):
                h = getattr(tv, name)(h)
            out["block768"] = F.adaptive_avg_pool2d(h, (1, 1)).squeeze(-1).squeeze(-1)
            h = tv.Mixed_7b(tv.Mixed_7a(h))
            state["max"] = True
            h = tv.Mixed_7c(h)
            pool3 = tv.avgpool(h).flatten(1)
            out.update(pool3=pool3, logits_biased=tv.fc(pool3), logits_unbiased=pool3 @ tv.fc.weight.t(),
                       logits=pool3 @ tv.fc.weight.t())
    finally:
        tvi.F = orig
        hook.remove()
    out["spatial"] = taps[0][:, :7].permute(0, 2, 3, 1).flatten(1)
    return out


def test_every_feature_equals_torchvision_layers_by_hand(model, x):
    want = _torchvision_features(model, x)
    with torch.inference_mode():
        got = model(x, features=FEATURES)
        assert list(got) == list(FEATURES)
        dims = feature_dims(SIZE)
        for f in FEATURES:
            assert got[f].dtype == torch.float32 and got[f].shape == (2, dims[f]), f
            torch.testing.assert_close(got[f], want[f], rtol=1e-5, atol=1e-5, msg=f)
        assert not torch.allclose(got["logits_biased"], got["logits_unbiased"])  # the bias is really applied
        # a subset gives the same values, and early stages alone stop early
        for f in PYTORCH_FID_DIMS.values():
            torch.testing.assert_close(model(x, features=(f,))[f], got[f], rtol=1e-6, atol=1e-6)


def test_hooks_fire_on_every_submodule_in_one_forward(model, x):
    fired, handles = [], []
    for name, mod in model.named_modules():
        handles.append(mod.register_forward_hook(lambda m, i, o, name=name: fired.append(name)))
    try:
        with torch.inference_mode():
            model(x, features=FEATURES)
            all_names = {n for n, _ in model.named_modules()}
            assert set(fired) == all_names and len(fired) == len(all_names)  # each exactly once
            assert "Mixed_6d" in fired and "Mixed_6d.branch1x1.conv" in fired and "fc" in fired
            fired.clear()
            model(x, features=("block192",))
            assert "Conv2d_4a_3x3" in fired and "Mixed_5b" not in fired  # stops after the last stage asked for
    finally:
        for h in handles:
            h.remove()


def test_feature_request_errors(model, x):
    with pytest.raises(ValueError, match="subset of"):
        model(x, features=("pool4",))
    no_fc = FIDInception().eval()
    no_fc.has_fc, no_fc.weights_source = False, "a file without fc"
    with pytest.raises(ValueError, match="no fc layer"):
        no_fc(x, features=("pool3", "logits_biased"))
    assert list(no_fc(x, spatial=False)) == ["pool3"]  # default call quietly omits the logits, as before
