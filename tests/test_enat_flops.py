"""Generation FLOPs (2 x MACs) on the meta device against the official figures (specs/nat.md 4.2)."""
import torch
import torch.nn.functional as F

from scripts import bench_flops as bf


def test_enat_cosine_masked_counts():
    assert bf.enat_masked_counts(256, 8) == [256, 251, 236, 212, 181, 142, 97, 49]


def test_enat_L_256_generation_flops():
    model = bf.build_meta(bf.ENAT_FLAVOURS, "ENAT_L")
    per_step = bf.enat_generation_flops(model, steps=8, guidance=True, reuse=True)
    official = [14.5, 17.5, 22.9, 28.5, 33.8, 40.1, 45.9, 50.6]   # per forward of one row, GFLOPs
    for got, want in zip(per_step, official):
        assert abs(got / 2e9 - want) <= 0.011 * want
    assert abs(sum(per_step) / 1e9 / 507.0 - 1) < 0.02


def test_enat_S_reuse_saving_matches_paper():
    model = bf.build_meta(bf.ENAT_FLAVOURS, "ENAT_S")
    reuse = sum(bf.enat_generation_flops(model, guidance=False, reuse=True)) / 1e9
    plain = sum(bf.enat_generation_flops(model, guidance=False, reuse=False)) / 1e9
    assert abs(reuse / 22.6 - 1) < 0.02 and abs(plain / 39.8 - 1) < 0.02


def test_autonat_L_and_vq_decoder_flops():
    from models.nat.model import FLAVOURS as NAT_FLAVOURS
    autonat = sum(bf.autonat_generation_flops(bf.build_meta(NAT_FLAVOURS, "AutoNAT_L"))) / 1e9
    assert abs(autonat / 1664.0 - 1) < 0.02
    assert abs(bf.vq_decoder_flops(256) / 1e9 / 186.5 - 1) < 0.02


def test_cpu_sdpa_is_counted_like_explicit_attention():
    q, k, v = torch.randn(1, 2, 5, 8), torch.randn(1, 2, 7, 8), torch.randn(1, 2, 7, 8)
    sdpa = bf.count_flops(F.scaled_dot_product_attention, q, k, v)
    explicit = bf.count_flops(lambda: torch.softmax(q @ k.transpose(-1, -2), -1) @ v)
    assert sdpa == explicit == 2 * 2 * (2 * 5 * 7 * 8)
