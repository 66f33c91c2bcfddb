import json
import math
from pathlib import Path

import pytest
import torch

from models.layers import count_params, timestep_embedding
from models.nit.model import FLAVOURS, NiT, pack_latents, rope_angles, rope_positions, unpack
from models.nit.varlen_attention import varlen_backend
from tests.nit_helpers import randomized

LAYOUT = Path(__file__).resolve().parents[1] / "assets" / "layouts" / "keys_nit_xl.json"


def test_xl_layout_matches_official_on_meta():
    spec = json.loads(LAYOUT.read_text())
    with torch.device("meta"):
        model = FLAVOURS["NiT_XL"]()
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    assert shapes == spec["keys"]
    assert len(shapes) == 409
    assert count_params(model) == spec["num_params_total"] == 684_041_632
    assert count_params(model.projector) == spec["num_params_projector"]
    official = {k: torch.empty(s, device="meta") for k, s in spec["keys"].items()}
    result = model.load_state_dict(official, strict=True, assign=True)
    assert not result.missing_keys and not result.unexpected_keys
    # the official constructor arguments build the same thing
    with torch.device("meta"):
        same = NiT(**spec["config"])
    assert {k: list(v.shape) for k, v in same.state_dict().items()} == spec["keys"]


# the spec's figures, to the precision they are given in
@pytest.mark.parametrize("name,without_projector,total,tol", [
    ("NiT_S", 32.87e6, None, 0.005e6), ("NiT_B", 130.33e6, 138.7e6, 0.05e6), ("NiT_L", 457.86e6, None, 0.005e6),
    ("NiT_XL", 674.86e6, 684.04e6, 0.005e6), ("NiT_XXL", 1708.7e6, None, 0.05e6), ("debug", None, 277_712, 0.5)])
def test_parameter_counts_match_the_spec_table(name, without_projector, total, tol):
    with torch.device("meta"):
        model = FLAVOURS[name]()
    n = count_params(model)
    if without_projector is not None:
        assert abs((n - count_params(model.projector)) - without_projector) < tol
    if total is not None:
        assert abs(n - total) < tol


def test_fresh_model_outputs_exactly_zero_and_keeps_the_layout():
    torch.manual_seed(0)
    model = FLAVOURS["debug"]().eval()
    x, hw = pack_latents([torch.randn(32, 3, 5), torch.randn(32, 4, 4)])
    v, zs = model(x, torch.tensor([0.3, 0.9]), torch.tensor([1, 1000]), hw, return_zs=True)
    assert v.shape == x.shape == (31, 32, 1, 1) and torch.all(v == 0)
    assert zs.shape == (31, 48)
    assert model.y_embedder.embedding_table.num_embeddings == 1001 and model.null_label == 1000


def test_pack_unpack_rearrangement():
    lat = torch.arange(2 * 4 * 6, dtype=torch.float32).reshape(2, 4, 6)
    x, hw = pack_latents([lat], patch_size=2)
    assert hw.tolist() == [[2, 3]] and hw.dtype == torch.int32 and x.shape == (6, 2, 2, 2)
    # 'c (h p1) (w p2) -> (h w) c p1 p2', restated with explicit indices
    for k in range(6):
        i, j = divmod(k, 3)
        torch.testing.assert_close(x[k], lat[:, 2 * i:2 * i + 2, 2 * j:2 * j + 2])
    lats = [torch.randn(3, 2, 5), torch.randn(3, 4, 1)]
    x, hw = pack_latents(lats)
    assert x.shape == (14, 3, 1, 1)
    assert torch.equal(x[5:7, :, 0, 0].T, lats[0][:, 1, :2])  # row-major: token 5 = (row 1, col 0)
    for a, b in zip(unpack(x, hw), lats):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="multiples of patch size"):
        pack_latents([torch.randn(3, 3, 4)], patch_size=2)


def test_official_rope_positions_are_the_meshgrid_quirk():
    a, b = rope_positions([(2, 3)], "official", "cpu")
    assert list(zip(a.tolist(), b.tolist())) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    for h, w in [(2, 3), (5, 4), (3, 3)]:
        grid = torch.stack(torch.meshgrid(torch.arange(h), torch.arange(w), indexing="xy")).reshape(2, h * w)
        a, b = rope_positions([(h, w)], "official", "cpu")
        assert torch.equal(a, grid[0]) and torch.equal(b, grid[1])
        a, b = rope_positions([(h, w)], "rowcol", "cpu")
        k = torch.arange(h * w)
        assert torch.equal(a, k % w) and torch.equal(b, k // w)  # (column, row)
    a, b = rope_positions([(1, 2), (2, 1)], "official", "cpu")  # per image, restarting at 0
    assert a.tolist() == [0, 0, 0, 1] and b.tolist() == [0, 1, 0, 0]


def test_rope_angles_frequencies_and_relative_property():
    cos, sin = rope_angles(torch.tensor([3]), torch.tensor([5]), head_dim=72)
    assert cos.shape == (1, 1, 72)
    d = 36
    freqs = torch.tensor([10000 ** (-2 * i / d) for i in range(18)])
    expect = torch.cat([3 * freqs, 5 * freqs]).repeat_interleave(2)
    torch.testing.assert_close(cos[0, 0], expect.cos())
    torch.testing.assert_close(sin[0, 0], expect.sin())
    # q·k after RoPE depends only on the position difference
    from models.nit.model import apply_rope
    g = torch.Generator().manual_seed(0)
    q, k = torch.randn(1, 1, 8, generator=g), torch.randn(1, 1, 8, generator=g)

    def dot(pa, pb):
        c1, s1 = rope_angles(torch.tensor([pa[0]]), torch.tensor([pa[1]]), 8)
        c2, s2 = rope_angles(torch.tensor([pb[0]]), torch.tensor([pb[1]]), 8)
        return (apply_rope(q, c1, s1) * apply_rope(k, c2, s2)).sum()
    torch.testing.assert_close(dot((1, 2), (4, 7)), dot((3, 0), (6, 5)))


def test_timestep_embedding_is_unscaled_cos_then_sin():
    t = torch.tensor([0.0, 0.5, 1.0])
    emb = timestep_embedding(t, 256)
    freqs = torch.exp(-math.log(10000) * torch.arange(128) / 128)
    torch.testing.assert_close(emb, torch.cat([torch.cos(t[:, None] * freqs), torch.sin(t[:, None] * freqs)], 1))
    assert emb[1, 0] == pytest.approx(math.cos(0.5)) and emb[1, 128] == pytest.approx(math.sin(0.5))


@pytest.mark.parametrize("rope", ["official", "rowcol"])
def test_pack_equals_each_image_alone_including_non_square(rope):
    torch.manual_seed(1)
    model = randomized(FLAVOURS["debug"](rope_positions=rope))
    lats = [torch.randn(32, 3, 5), torch.randn(32, 4, 4), torch.randn(32, 1, 7), torch.randn(32, 6, 2)]
    t = torch.tensor([0.1, 0.5, 0.7, 0.95])
    y = torch.tensor([3, 1000, 7, 999])
    x, hw = pack_latents(lats)
    with varlen_backend("runs"), torch.no_grad():
        packed, zs = model(x, t, y, hw, return_zs=True)
        for i, lat in enumerate(lats):
            xi, hwi = pack_latents([lat])
            vi, zi = model(xi, t[i:i + 1], y[i:i + 1], hwi, return_zs=True)
            sl = slice(int(hw[:i].prod(1).sum()), int(hw[:i + 1].prod(1).sum()))
            torch.testing.assert_close(packed[sl], vi, rtol=0, atol=1e-5)
            torch.testing.assert_close(zs[sl], zi, rtol=0, atol=1e-5)
    assert packed.abs().mean() > 0.05  # a real (non-zero) function was compared


def test_rope_modes_agree_on_square_and_differ_on_non_square():
    torch.manual_seed(2)
    official = randomized(FLAVOURS["debug"]())
    rowcol = randomized(FLAVOURS["debug"](rope_positions="rowcol"))
    t, y = torch.tensor([0.4]), torch.tensor([5])
    with torch.no_grad():
        x, hw = pack_latents([torch.randn(32, 4, 4)])
        torch.testing.assert_close(official(x, t, y, hw), rowcol(x, t, y, hw), rtol=0, atol=0)
        x, hw = pack_latents([torch.randn(32, 2, 3)])
        assert (official(x, t, y, hw) - rowcol(x, t, y, hw)).abs().max() > 1e-3


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(3)
    plain = randomized(FLAVOURS["debug"]()).train()
    ckpt = FLAVOURS["debug"](use_checkpoint=True).train()
    ckpt.load_state_dict(plain.state_dict())
    x, hw = pack_latents([torch.randn(32, 2, 3), torch.randn(32, 2, 2)])
    t, y = torch.tensor([0.2, 0.8]), torch.tensor([1, 2])
    for m in (plain, ckpt):
        v, zs = m(x, t, y, hw, return_zs=True)
        (v.square().mean() + zs.square().mean()).backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-6, msg=name)


def test_bad_inputs_are_rejected():
    model = FLAVOURS["debug"]()
    x, hw = pack_latents([torch.randn(32, 2, 3)])
    with pytest.raises(ValueError, match="N=6"):
        model(x[:5], torch.tensor([0.5]), torch.tensor([1]), hw)
    with pytest.raises(ValueError, match="one t and one label"):
        model(x, torch.tensor([0.5, 0.2]), torch.tensor([1]), hw)
    with pytest.raises(ValueError, match="rope_positions"):
        FLAVOURS["debug"](rope_positions="xy")
