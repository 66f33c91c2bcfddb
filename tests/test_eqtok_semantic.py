"""Semantic alignment of the column tokenizer: the DINOv2 ViT-B/14 file layout, strict loading, the one-line error
for a missing file, the teacher's features and the semantic term against explicit re-statements, the pluggable
teacher, and alignment off with weight 0 (the demo)."""
import pytest
import torch
import torch.nn.functional as F

from core.loading import CheckpointError
from engine.config import load_config
from models import build_model
from models.eqtok.family import eqtok_loss, loss_weights, semantic_teacher
from models.family import TrainContext
from tests import test_eqtok_restate as H
from tokenizer.column import gaussian_sample
from models.eqtok.semantic import Dinov2Teacher, build_teacher
from models.eqtok.vit import DINOV2_URL, build_dinov2, load_dinov2

RECIPE = "configs/debug/eqtok_debug.yaml"


def _file(tmp_path, seed=1):
    sd = H.random_state(build_dinov2("debug"), seed)
    path = tmp_path / "dinov2_debug.pth"
    torch.save(sd, path)
    return path, sd


def test_dinov2_layout_on_meta():
    """dinov2_vitb14_pretrain.pth (torch hub names): 37 x 37 position grid at 518 px, mask token, layer scale."""
    with torch.device("meta"):
        net = build_dinov2("vit_base_14")
    expect = {"cls_token": (1, 1, 768), "pos_embed": (1, 1370, 768), "mask_token": (1, 768),
              "patch_embed.proj.weight": (768, 3, 14, 14), "patch_embed.proj.bias": (768,),
              "norm.weight": (768,), "norm.bias": (768,)}
    for i in range(12):
        p = f"blocks.{i}."
        expect.update({p + "norm1.weight": (768,), p + "norm1.bias": (768,), p + "attn.qkv.weight": (2304, 768),
                       p + "attn.qkv.bias": (2304,), p + "attn.proj.weight": (768, 768), p + "attn.proj.bias": (768,),
                       p + "ls1.gamma": (768,), p + "norm2.weight": (768,), p + "norm2.bias": (768,),
                       p + "mlp.fc1.weight": (3072, 768), p + "mlp.fc1.bias": (3072,),
                       p + "mlp.fc2.weight": (768, 3072), p + "mlp.fc2.bias": (768,), p + "ls2.gamma": (768,)})
    assert {k: tuple(v.shape) for k, v in net.state_dict().items()} == expect
    assert sum(p.numel() for p in net.parameters()) == 86_580_480


def test_strict_load_and_missing_file(tmp_path):
    path, sd = _file(tmp_path)
    net = load_dinov2(path, "debug")
    assert all(torch.equal(net.state_dict()[k], v) for k, v in sd.items()) and set(net.state_dict()) == set(sd)
    torch.save({k: v for k, v in sd.items() if k != "mask_token"}, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match="mask_token"):
        load_dinov2(tmp_path / "short.pth", "debug")
    missing = tmp_path / "dinov2_vitb14_pretrain.pth"
    for call in (lambda: load_dinov2(missing), lambda: build_teacher("dinov2", missing)):
        with pytest.raises(FileNotFoundError) as e:
            call()
        assert "\n" not in str(e.value) and str(missing) in str(e.value) and DINOV2_URL in str(e.value)


def test_teacher_features_equal_restatement(tmp_path):
    path, sd = _file(tmp_path)
    teacher = Dinov2Teacher(load_dinov2(path, "debug"))
    x = torch.rand(2, 3, 16, 24) * 2 - 1
    got = teacher(x, (4, 6))
    # [0, 1], ImageNet statistics, bicubic to 2 * (4, 6) pixels (patch 2), position grid resampled 4x4 -> 4x6,
    # final-normed patch tokens laid out row-major on the grid
    y = F.interpolate(((x + 1) / 2 - H.MEAN) / H.STD, size=(8, 12), mode="bicubic")
    _, h = H.vit(sd, y, heads=2, patch=2, final_norm=True)
    ref = h[:, 1:].transpose(1, 2).reshape(2, 64, 4, 6)
    assert got.shape == (2, 64, 4, 6) and torch.allclose(got, ref, atol=1e-4)
    assert torch.allclose(teacher(x[:, :1], (4, 6)), teacher(x[:, :1].expand(-1, 3, -1, -1), (4, 6)))  # grey


def test_semantic_term_in_the_loss_equals_restatement(tmp_path):
    path, _ = _file(tmp_path)
    cfg = load_config(RECIPE, ["loss.semantic_weight=5.0", "loss.semantic_start=10", "loss.semantic_teacher=dinov2",
                               f"loss.dinov2_path={path}", "loss.dinov2_flavour=debug", "loss.disc_start=1000"])
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    teacher = semantic_teacher(cfg, torch.device("cpu"))
    assert isinstance(teacher, Dinov2Teacher)
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    w = loss_weights(cfg)
    torch.manual_seed(3)
    total, logs = model(x, 10, w, teacher=teacher)
    torch.manual_seed(3)
    mean = model.encode_mean(x)
    x_hat, sem = model.decode(gaussian_sample(mean), semantic=True)
    target = teacher(x, (4, 4))
    sem_ref = ((sem - target) ** 2).sum() / 2
    ref = (x - x_hat).abs().sum() / 2 + 0.01 * 0.5 * mean.pow(2).sum() / 2 + 5.0 * sem_ref
    assert logs["semantic"] == pytest.approx(sem_ref.item(), rel=1e-5)
    assert total.item() == pytest.approx(ref.item(), rel=1e-5)
    total.backward()
    assert model.semantic_decoder.conv_out.weight.grad.abs().sum() > 0
    assert not any(p.requires_grad or p.grad is not None for p in teacher.parameters())
    model.zero_grad()
    _, early = model(x, 9, w, teacher=teacher)  # before semantic_start: no term, the semantic decoder idle
    assert "semantic" not in early
    ctx = TrainContext(cfg=cfg, step=10)
    _, logs2 = eqtok_loss(model, {"image": x}, ctx)  # the family builds and caches the same teacher
    assert "semantic" in logs2


def make_teacher(path):
    """A pluggable teacher: any module (images, grid size) -> (B, C, h, w)."""
    class Pool(torch.nn.Module):
        def forward(self, images, size):
            return F.adaptive_avg_pool2d(images.mean(1, keepdim=True), size).expand(-1, 64, -1, -1)
    return Pool()


def test_pluggable_teacher_and_off_by_default_in_the_demo(tmp_path):
    cfg = load_config(RECIPE, ["loss.semantic_weight=1.0", "loss.semantic_start=0",
                               "loss.semantic_teacher=tests.test_eqtok_semantic:make_teacher"])
    teacher = semantic_teacher(cfg, torch.device("cpu"))
    model, _ = build_model(cfg)
    _, logs = model(torch.rand(2, 3, 16, 16) * 2 - 1, 0, loss_weights(cfg), teacher=teacher)
    assert logs["semantic"] > 0
    bad = lambda images, size: torch.zeros(images.shape[0], 3, *size)  # noqa: E731  wrong channel count
    with pytest.raises(ValueError, match="do not match the semantic decoder output"):
        model(torch.rand(2, 3, 16, 16) * 2 - 1, 0, loss_weights(cfg), teacher=bad)
    demo = load_config("configs/demo/eqtok_fmnist.yaml", ["loss.dinov2_path=/nonexistent/dinov2.pth"])
    assert float(demo.loss.semantic_weight) == 0.0 and semantic_teacher(demo, torch.device("cpu")) is None
