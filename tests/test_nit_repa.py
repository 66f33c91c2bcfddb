"""REPA's pluggable encoder (models/nit/repa_encoders.py through the nit family): the term equals a re-statement with a
tiny stand-in encoder, repa_coeff=0 loads nothing, missing files are one-line errors naming the file and where to get
it, and a RADIO checkpoint goes through a local torch.hub repo (source='local', nothing downloaded)."""
import collections

import pytest
import torch
import torch.nn.functional as F

from engine.config import load_config
from models import build_model
from models.nit import family as nit_family
from models.family import TrainContext
from models.nit.model import pack_latents
from models.nit.family import family_loss, param_groups
from models.nit.repa_encoders import build_feature_encoder, output_features, resolve_kind
from tests.nit_helpers import randomized

DEBUG = "configs/debug/nit_debug.yaml"
PATCH = 16
Z = 48  # the debug flavour's z_dim


def tiny_encoder():
    """The 'any module' hook's factory: a 16x16 patch conv whose output is a (1, z, H/16, W/16) grid."""
    conv = torch.nn.Conv2d(3, Z, kernel_size=PATCH, stride=PATCH)
    g = torch.Generator().manual_seed(11)  # not the global RNG: the loss draws t and noise from it
    with torch.no_grad():
        for p in conv.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return conv


def _batch():
    g = torch.Generator().manual_seed(0)
    grids = [(2, 3), (3, 2), (2, 2)]
    x, hw = pack_latents([torch.randn(32, h, w, generator=g) for h, w in grids])
    images = [torch.rand(3, 40 + 8 * i, 56 - 4 * i, generator=g) for i in range(len(grids))]
    return {"x": x, "hw_list": hw, "label": torch.tensor([3, 1, 7]), "images": images,
            "flip": torch.tensor([True, False, True])}


@pytest.fixture(autouse=True)
def _fresh_cache():
    nit_family._ENCODERS.clear()
    yield
    nit_family._ENCODERS.clear()


def test_repa_term_equals_a_restatement_with_a_stand_in_encoder():
    cfg = load_config(DEBUG, [f"loss.repa_encoder={__name__}:tiny_encoder", "loss.repa_coeff=0.7"])
    model, _ = build_model(cfg)
    model = randomized(model, seed=2)
    batch = _batch()
    torch.manual_seed(5)
    loss, logs = family_loss(model, batch, TrainContext(cfg=cfg))

    # restated: the same draws (t, noise, drop from the global RNG, in that order), the hidden state after block
    # encoder_depth through the projector, the encoder on each flipped image resized to 16 x its latent grid
    torch.manual_seed(5)
    b = len(batch["label"])
    t = torch.sigmoid(torch.randn(b))
    noise = torch.randn(batch["x"].shape)
    drop = torch.rand(b) < 0.1
    y = torch.where(drop, torch.full_like(batch["label"], 1000), batch["label"])
    lengths = [h * w for h, w in batch["hw_list"].tolist()]
    tt = torch.cat([t[i].expand(n) for i, n in enumerate(lengths)]).view(-1, 1, 1, 1)
    x_t = (1 - tt) * batch["x"] + tt * noise
    seen = {}
    hook = model.blocks[model.encoder_depth - 1].register_forward_hook(lambda m, a, out: seen.update(h=out))
    with torch.no_grad():
        pred = model(x_t, t, y, batch["hw_list"])
    hook.remove()
    zs = model.projector(seen["h"]).detach().double()
    enc = tiny_encoder()
    feats = []
    for img, (h, w), flip in zip(batch["images"], batch["hw_list"].tolist(), batch["flip"].tolist()):
        img = img.flip(-1) if flip else img
        img = F.interpolate(img[None], size=(PATCH * h, PATCH * w), mode="bicubic", align_corners=False,
                            antialias=True)
        feats.append(enc(img)[0].permute(1, 2, 0).reshape(h * w, Z))
    z = torch.cat(feats).detach().double()
    repa = (1 - (zs * z).sum(1) / (zs.norm(dim=1) * z.norm(dim=1))).mean()
    v = (noise - batch["x"]).flatten(1).double()
    p = pred.flatten(1).double()
    mse = (p - v).square().mean(1).mean()
    direction = (1 - (p * v).sum(1) / (p.norm(dim=1) * v.norm(dim=1))).mean()
    assert logs["repa"] == pytest.approx(repa.item(), rel=1e-5)
    assert loss.item() == pytest.approx((mse + direction + 0.7 * repa).item(), rel=1e-5)
    assert 0.5 < logs["repa"] < 1.5  # a random projector against random features: about orthogonal
    loss.backward()
    assert model.projector[0].weight.grad is not None and model.projector[0].weight.grad.abs().sum() > 0


def test_repa_coeff_zero_loads_no_encoder():
    cfg = load_config(DEBUG, ["loss.repa_encoder=/nonexistent/radio_v2.5-h.pth.tar", "loss.repa_coeff=0"])
    model, _ = build_model(cfg)
    batch = _batch()
    loss, logs = family_loss(model, batch, TrainContext(cfg=cfg))
    assert "repa" not in logs and logs["loss"] == pytest.approx(logs["mse"] + logs["dir"])
    assert nit_family._ENCODERS == {}
    trained = {id(p) for p in param_groups(model, cfg)[0]["params"]}
    assert not any(id(p) in trained for p in model.projector.parameters())


@pytest.mark.parametrize("spec,kind,names", [
    ("{d}/encoder.pt2", "auto", ["encoder.pt2", "loss.repa_encoder=null"]),
    ("{d}/radio_v2.5-h.pth.tar", "auto", ["radio_v2.5-h.pth.tar",
                                          "https://huggingface.co/nvidia/RADIO/resolve/main/radio_v2.5-h.pth.tar"]),
    ("{d}/radio_v2.5-b.pth.tar", "radio", ["https://huggingface.co/nvidia/RADIO/resolve/main/radio_v2.5-b.pth.tar"]),
])
def test_a_missing_encoder_file_is_a_one_line_error(tmp_path, spec, kind, names):
    cfg = load_config(DEBUG, [f"loss.repa_encoder={spec.format(d=tmp_path)}", f"loss.repa_kind={kind}"])
    model, _ = build_model(cfg)
    with pytest.raises(FileNotFoundError) as e:
        family_loss(model, _batch(), TrainContext(cfg=cfg))
    msg = str(e.value)
    assert "\n" not in msg and all(n in msg for n in names), msg


def test_radio_checkpoint_without_its_code_names_the_repo(tmp_path):
    ckpt = tmp_path / "radio_v2.5-h.pth.tar"
    torch.save({"state_dict": {}}, ckpt)
    for repo in (None, str(tmp_path / "RADIO")):
        with pytest.raises(FileNotFoundError) as e:
            build_feature_encoder(str(ckpt), radio_repo=repo)
        msg = str(e.value)
        assert "\n" not in msg and "https://github.com/NVlabs/RADIO" in msg and "loss.radio_repo" in msg, msg


HUBCONF = '''
import collections
import torch

Out = collections.namedtuple("RadioOutput", "summary features")


class FakeRadio(torch.nn.Module):
    """Stands in for RADIO: [0, 1] input conditioned, one cls + one register token in front of the patch tokens."""

    def __init__(self, weight):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, weight.shape[0], 16, 16, bias=False)
        self.proj.weight.data.copy_(weight)

    def forward(self, x):
        x = (x - 0.5) / 0.25
        tokens = self.proj(x).flatten(2).transpose(1, 2)
        extra = torch.zeros(x.shape[0], 2, tokens.shape[2])
        y = torch.cat([extra, tokens], 1)
        return Out(y[:, 0], y[:, 2:])


def radio_model(version="", progress=True, **kwargs):
    chk = torch.load(version, map_location="cpu", weights_only=True)
    return FakeRadio(chk["state_dict"]["proj.weight"])
'''


def test_radio_through_a_local_hub_repo(tmp_path, monkeypatch):
    repo = tmp_path / "RADIO"
    repo.mkdir()
    (repo / "hubconf.py").write_text(HUBCONF)
    weight = torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    ckpt = tmp_path / "radio_v2.5-h.pth.tar"
    torch.save({"state_dict": {"proj.weight": weight}}, ckpt)

    def no_network(*a, **k):
        raise AssertionError("a download was attempted")
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_network)
    assert resolve_kind("auto", str(ckpt)) == "radio"
    enc = build_feature_encoder(str(ckpt), radio_repo=str(repo))
    img = torch.rand(1, 3, 32, 48)
    got = enc(img)
    want = F.conv2d((img - 0.5) / 0.25, weight, stride=16).flatten(2).transpose(1, 2)
    assert got.shape == (1, 6, 8) and torch.allclose(got, want, atol=1e-5)
    enc.train()
    assert not enc.training and not enc.encoder.training
    assert all(not p.requires_grad for p in enc.parameters())


def test_kind_resolution_and_output_forms(tmp_path):
    (tmp_path / "enc.pt").write_bytes(b"")
    assert resolve_kind("auto", str(tmp_path / "enc.pt2")) == "export"
    assert resolve_kind("auto", str(tmp_path / "enc.pt")) == "export"
    assert resolve_kind("auto", "mypkg.encoders:build") == "module"
    assert resolve_kind("radio", str(tmp_path / "enc.pt")) == "radio"
    with pytest.raises(ValueError, match="repa_kind"):
        resolve_kind("hub", "x")
    f = torch.randn(1, 4, 3)
    out = collections.namedtuple("RadioOutput", "summary features")(torch.zeros(1, 3), f)
    for form in (f, (torch.zeros(1, 3), f), out, {"backbone": out}):
        assert output_features(form) is f
    with pytest.raises(ValueError, match="module:factory"):
        build_feature_encoder("no_such_package_xyz:build", "module")
