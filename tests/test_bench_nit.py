"""scripts/bench_nit.py in its tiny mode prints every figure of its four parts in one run, and its numbers hold up:
attention paths agree, the dense mask's measured peak memory covers its N×N mask while the default path's does not,
and the full NiT-B FLOP count equals a hand count of the same network."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import bench_nit  # noqa: E402


@pytest.fixture(scope="module")
def run():
    import contextlib
    import io
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        out = bench_nit.main(["--tiny"])
    return out, buf.getvalue()


def test_prints_every_part_in_one_run(run):
    out, text = run
    for needle in ("precision auto -> ", "== (a) packed training", "tokens/s", "images/s", "% own peak",
                   "bf16 autocast / fp32 training throughput", "== (b) attention paths", "dense", "peak memory:",
                   "forward time vs the dense-mask baseline", "== (c) Euler ODE sampling", "== (d) FLOPs",
                   "matmul peak"):
        assert needle in text, needle
    assert out["auto"] in ("fp32", "bf16")
    assert [r[0] for r in out["train"]] == ["fp32", "bf16"] and all(r[2] > 0 and r[3] > 0 for r in out["train"])
    assert {(r[0], r[1]) for r in out["sample"]} == {((2, 2), "fp32"), ((2, 2), "bf16"), ((3, 3), "fp32"),
                                                     ((3, 3), "bf16")}
    assert set(out["peaks"]) == {"fp32", "bf16"} and min(out["peaks"].values()) > 0


def test_attention_paths_agree_and_memory_sees_the_dense_mask(run):
    out, _ = run
    res, mem = out["attn"]["results"], out["attn"]["memory"]
    assert {"runs", "loop", "grouped", "dense", "nested"} <= set(res)
    assert all(r["err"] < 1e-5 for r in res.values()), {k: r["err"] for k, r in res.items()}
    assert all(r["fwd"] and (r["fwdbwd"] or name == "flex") for name, r in res.items())
    n = 2 * 32 * 32  # the tiny attention pack: two 32x32 images
    assert mem["dense"]["fwd"] >= n * n  # at least its bool N×N mask
    assert mem["runs"]["fwd"] < n * n / 2  # block-diagonal only: each segment's L² is 1/4 of that
    assert mem["dense"]["fwdbwd"] >= mem["dense"]["fwd"]


def _hand_count(grids, depth=12, d=768, c=32, proj=2048, z=1280, freq=256):
    n, b = sum(h * w for h, w in grids), len(grids)
    per_token = depth * (3 * d * d + d * d + 8 * d * d) + c * d + d * c  # qkv, proj, mlp; embedder, final linear
    per_image = freq * d + d * d + depth * 6 * d * d + 2 * d * d  # t-MLP, adaLN (once per image here)
    attention = depth * sum(4 * (h * w) ** 2 * d for h, w in grids)  # q·kᵀ and attn·v
    projector = d * proj + proj * proj + proj * z
    return 2 * (n * per_token + b * per_image + n * projector) + attention


def test_nit_b_flops_equal_a_hand_count_and_the_spec(run):
    out, _ = run
    f = out["flops"]
    assert f["1x32x32"]["zs"] == _hand_count([(32, 32)])
    assert f["4x16x16"]["zs"] == _hand_count([(16, 16)] * 4)
    # with adaLN per token as in the official code: the spec's ≈ 0.32 TFLOP for B
    assert abs(f["1x32x32"]["rel"]) < 0.03
