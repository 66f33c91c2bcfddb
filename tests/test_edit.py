"""Editing and the Python API on debug NAT / ENAT with random weights: the API's samples are eval's PNGs, kept
codes stay bit-identical, an empty mask is the tokenizer's reconstruction, a full mask is plain sampling, and
--mode edit writes the same files with 1 and 2 processes."""

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import load_config
from models import build_model
from tests.helpers import run, torchrun_cmd

RECIPES = {"nat": "configs/debug/nat_fmnist_debug.yaml", "enat": "configs/debug/enat_debug.yaml"}
SIZE = {"nat": 32, "enat": 16}  # the debug demo VQ (factor 4) on the 8x8 and 4x4 token grids


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Per family: random debug generator weights (a plain state dict), a random debug demo VQ, a few PNGs."""
    from tokenizer.demo_vq import build_demo_vq
    d = tmp_path_factory.mktemp("edit")
    torch.manual_seed(0)
    vq = build_demo_vq("debug")
    torch.save({"model": vq.state_dict(), "family": "demo_vq", "config": {"model": {"flavour": "debug"}}},
               d / "tokenizer.pt")
    out = {}
    for name, recipe in RECIPES.items():
        model, _ = build_model(load_config(recipe))
        with torch.no_grad():  # adaLN-Zero / zero inits would make every row the same: exercise every path
            for p in model.parameters():
                p.normal_(0, 0.3)
        torch.save(model.state_dict(), d / f"{name}.pth")
        imgs = d / f"{name}_png"
        imgs.mkdir()
        rng = np.random.default_rng(1)
        s = SIZE[name]
        for k in range(3):
            Image.fromarray(rng.integers(0, 256, (s, s), dtype=np.uint8)).save(imgs / f"img{k}.png")
        out[name] = {"recipe": recipe, "weights": d / f"{name}.pth", "images": imgs,
                     "keys": {"tokenizer.ckpt": str(d / "tokenizer.pt"), "device": "cpu"}}
    return d, out


def _api(w, **extra):
    from engine.api import load_generator
    return load_generator(w["recipe"], checkpoint=w["weights"], device="cpu",
                          **{k: v for k, v in w["keys"].items() if k != "device"}, **extra)


def _cli(w, out):
    return ["--config", w["recipe"], f"eval.pretrained_path={w['weights']}", f"output_dir={out}",
            *(f"{k}={v}" for k, v in w["keys"].items())]


def _png_rgb(path) -> np.ndarray:
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


@pytest.mark.parametrize("name", ["nat", "enat"])
def test_api_sample_is_eval_png(world, tmp_path, name):
    """g.sample(indices=unit, seed=s) equals the PNGs --mode eval seed=s writes for those indices."""
    _, ws = world
    w = ws[name]
    out = tmp_path / "ev"
    run(torchrun_cmd(1, *_cli(w, out), "--mode", "eval", "eval.metrics=[]", "eval.save_png=-1", "eval.n=4",
                     "eval.batch_size=2", "seed=7"))
    (tag,) = (out / "eval").iterdir()
    g = _api(w)
    for unit in ([0, 1], [2, 3]):
        got = g.sample(indices=unit, seed=7).numpy()
        assert got.dtype == np.uint8 and got.shape == (2, SIZE[name], SIZE[name], 3)
        for k, i in enumerate(unit):
            assert np.array_equal(got[k], _png_rgb(tag / "png" / f"{i:06d}.png")), (name, i)
    other = g.sample(indices=[0, 1], seed=8).numpy()
    assert not np.array_equal(other, g.sample(indices=[0, 1], seed=7).numpy())


@pytest.mark.parametrize("name", ["nat", "enat"])
def test_edit_keeps_codes_and_limits(world, name):
    from core.seeding import row_generators
    _, ws = world
    g = _api(ws[name])
    s = SIZE[name]
    imgs = g.sample(indices=[0, 1, 2], seed=3)
    # a box in the middle: kept codes bit-identical, masked ones regenerated, the schedule over the masked ones
    box = f"box:{s // 4},{s // 4},{3 * s // 4},{3 * s // 4}"
    out, res = g.edit(imgs, box, labels=[1, 2, 3], seed=5, return_codes=True)
    keep, known, codes = res["keep"], res["known"], res["codes"]
    assert keep.shape == known.shape == codes.shape and 0 < int((~keep).sum()) < keep.numel()
    assert torch.equal(codes[keep], known[keep])
    assert not torch.equal(codes[~keep], known[~keep])
    assert int((~keep[0]).sum()) == (s // 8) ** 2  # the centre half: a quarter of the codes
    # the edit of image k draws from generator (seed, k) alone: image 1 edited alone is the same
    alone = g.edit(imgs[1:2], box, labels=2, seed=5, indices=[1])
    assert torch.equal(alone[0], out[1])
    # empty mask: the reconstruction; full mask: plain sampling with the same generators and labels
    assert torch.equal(g.edit(imgs, None, labels=0), g.decode(g.encode(imgs)))
    full = g.edit(imgs, "box:0,0,%d,%d" % (s, s), labels=[4, 5, 6], seed=9)
    assert torch.equal(full, g.sample(labels=[4, 5, 6], seed=9, indices=[0, 1, 2]))
    # the same at the family's level: keep all False == sample (same generators), keep all True == known
    fam, model = g.family, g.model
    settings = g.settings()
    lab = torch.tensor([4, 5, 6])
    with torch.inference_mode():
        ref = fam.sampling.sample(model, lab, row_generators(9, range(3)), settings)
        none = fam.sampling.edit(model, known, torch.zeros_like(keep), lab, row_generators(9, range(3)), settings)
        every = fam.sampling.edit(model, known, torch.ones_like(keep), lab, row_generators(9, range(3)), settings)
    assert torch.equal(ref, none) and torch.equal(every, known)
    # one mask per image (ragged editable counts in one batch: ENAT's encoder takes rows of other lengths)
    ragged = torch.zeros(3, s, s, dtype=torch.bool)
    ragged[0, :s // 2], ragged[1, :, :s // 4], ragged[2, -4:, -4:] = True, True, True
    out, res = g.edit(imgs, ragged, labels=[1, 2, 3], seed=5, return_codes=True)
    counts = (~res["keep"]).flatten(1).sum(1).tolist()
    assert len(set(counts)) == 3 and torch.equal(res["codes"][res["keep"]], res["known"][res["keep"]])


def test_mask_predict_schedule_counts_editable_tokens():
    """Editing with E editable tokens of L: after step t the row holds floor(E r_t) masked tokens (clamped), as plain
    sampling of E tokens would; the random draws stay those of plain sampling (2 L uniforms per row and step)."""
    from samplers.mask_predict import sample
    from samplers.strategy import Strategy
    L, V, E = 16, 8, 6
    seen = []

    def fn(ids, labels):
        seen.append((ids == V).sum(dim=1).tolist())
        return torch.zeros(ids.shape[0], L, V)

    strat = Strategy.enat_cosine(4, 0.0, 1.0, 1.0)
    keep = torch.ones(2, L, dtype=torch.bool)
    keep[0, :E] = False  # row 0: 6 editable; row 1: nothing to edit
    known = torch.arange(2 * L).reshape(2, L) % V
    gens = [torch.Generator().manual_seed(i) for i in range(2)]
    out = sample(fn, torch.zeros(2, dtype=torch.long), gens, seq_len=L, codebook_size=V, strategy=strat,
                 rule="exact", known=known, keep=keep)
    masked = [row[0] for row in seen]
    targets = strat.masked_after(E)  # floor(E r_t): the editable count, not L, sets the schedule
    assert masked[0] == E and masked[1:] == [max(1, min(masked[k] - 1, targets[k])) for k in range(3)]
    assert [row[1] for row in seen] == [0, 0, 0, 0]  # nothing editable: nothing ever masked, known returned
    assert torch.equal(out[1], known[1]) and torch.equal(out[0, E:], known[0, E:])
    ref = [torch.Generator().manual_seed(i) for i in range(2)]
    for g in ref:
        torch.rand((4, 2, L), generator=g)
    assert all(torch.equal(a.get_state(), b.get_state()) for a, b in zip(gens, ref))


def _same_edits_for_one_and_two_processes(w, tmp_path, images, mask: str, grid: bool = False) -> None:
    """--mode edit of 3 images (labels 1, 2, 3, seed 4, batches of 2) under 1 and 2 processes: the same PNG files."""
    common = [f"edit.images={images}", f"edit.mask={mask}", "edit.labels=[1,2,3]", "edit.seed=4",
              "edit.batch_size=2"]
    files = {}
    for nproc in (1, 2):
        out = tmp_path / f"p{nproc}"
        run(torchrun_cmd(nproc, *_cli(w, out), "--mode", "edit", *common))
        files[nproc] = {p.name: p.read_bytes() for p in sorted((out / "edit").glob("*.png"))}
        if grid:
            assert (out / "edit_grid.png").is_file()
    assert sorted(files[1]) == ["000000.png", "000001.png", "000002.png"]
    assert files[1] == files[2]


@pytest.mark.parametrize("name", ["nat", "enat"])
def test_mode_edit_one_and_two_processes(world, tmp_path, name):
    _, ws = world
    w = ws[name]
    s = SIZE[name]
    _same_edits_for_one_and_two_processes(w, tmp_path, w["images"], f"box:0,0,{s // 2},{s}", grid=True)
    # the API's edit of the same PNGs (same seed, indices = the folder's order) is the same image
    g = _api(w)
    imgs = torch.stack([torch.from_numpy(np.array(Image.open(w["images"] / f"img{k}.png"))) for k in range(3)])
    got = g.edit(imgs, f"box:0,0,{s // 2},{s}", labels=[1, 2, 3], seed=4, indices=[0, 1, 2])
    # --mode edit batches 2 + 1; the API 3 at once: compare the rows of the last unit alone
    last = g.edit(imgs[2:], f"box:0,0,{s // 2},{s}", labels=3, seed=4, indices=[2])
    assert np.array_equal(last[0].numpy(), _png_rgb(tmp_path / "p1" / "edit" / "000002.png"))
    assert got.shape == (3, s, s, 3)


def test_mode_edit_outpaint_canvas(world, tmp_path):
    """--mode edit places 16x16 PNGs on the debug NAT's 32x32 canvas at edit.anchor: the border is generated, the
    image's codes kept (pixels: the tokenizer's reconstruction of the canvas there)."""
    _, ws = world
    w = ws["nat"]
    small = tmp_path / "small"
    small.mkdir()
    rng = np.random.default_rng(2)
    for k in range(2):
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(small / f"{k}.png")
    out = tmp_path / "out"
    run(torchrun_cmd(1, *_cli(w, out), "--mode", "edit", f"edit.images={small}", "edit.canvas=[32,32]",
                     "edit.anchor=[8,8]", "edit.labels=2", "edit.seed=1"))
    g = _api(w)
    imgs = torch.stack([torch.from_numpy(np.array(Image.open(small / f"{k}.png"))) for k in range(2)])
    want = g.edit(imgs, None, labels=2, seed=1, canvas=(32, 32), anchor=(8, 8))
    for k in range(2):
        assert np.array_equal(want[k].numpy(), _png_rgb(out / "edit" / f"{k:06d}.png"))
    with Image.open(out / "edit_grid.png") as grid:
        assert grid.size == (3 * 34, 2 * 34)  # rows: images; columns: input, mask, output (1-px borders)


def test_outpaint_canvas_nat(world):
    """Outpainting with a fixed-grid family: a smaller image on the model's canvas, the border generated."""
    _, ws = world
    g = _api(ws["nat"])
    small = torch.full((2, 16, 16), 200, dtype=torch.uint8)
    out, res = g.edit(small, None, labels=1, canvas=(32, 32), anchor=(8, 8), return_codes=True)
    keep = res["keep"]
    assert keep[:, 2:6, 2:6].all() and int(keep.sum()) == 2 * 16
    with pytest.raises(ValueError, match="fixed 8x8 token grid"):
        g.edit(small, None, labels=1, canvas=(40, 40))
    with pytest.raises(ValueError, match="outside the canvas"):
        g.edit(small, None, labels=1, canvas=(32, 32), anchor=(20, 0))


@pytest.fixture(scope="module")
def flow_world(tmp_path_factory):
    """Debug NiT (random flat safetensors, tiny DC-AE) and debug column AR (a step-0 checkpoint, debug column
    tokenizer): the API's generic path for the families that sample latents."""
    from engine.optim import build_optimizer, make_ema
    from engine.trainer import save_checkpoint
    from tests.nit_helpers import write_eval_assets
    from tokenizer.column import build_column_autoencoder
    d = tmp_path_factory.mktemp("edit_flow")
    nit = write_eval_assets(d)
    torch.manual_seed(0)
    sd = build_column_autoencoder("debug").state_dict()
    torch.save({"family": "eqtok", "config": {"model": {"flavour": "debug"}}, "model": sd, "ema": sd, "step": 1},
               d / "column.pt")
    cfg = load_config("configs/debug/eqar_debug.yaml")
    model, fam = build_model(cfg)
    save_checkpoint(d / "eqar.pt", model, make_ema(model), build_optimizer(model, cfg.train), 0, fam.name, cfg)
    return {"nit": {"recipe": "configs/debug/nit_debug.yaml", "weights": nit["weights"],
                    "keys": {"tokenizer.ckpt": str(nit["dcae"]), "sample.height": 32, "sample.width": 32,
                             "device": "cpu"}},
            "eqar": {"recipe": "configs/debug/eqar_debug.yaml", "weights": d / "eqar.pt",
                     "keys": {"tokenizer.ckpt": str(d / "column.pt"), "device": "cpu"}}}


@pytest.mark.parametrize("name", ["nit", "eqar"])
def test_api_sample_is_eval_png_latent_families(flow_world, tmp_path, name):
    w = flow_world[name]
    out = tmp_path / "ev"
    run(torchrun_cmd(1, *_cli(w, out), "--mode", "eval", "eval.metrics=[]", "eval.save_png=-1", "eval.n=2",
                     "eval.batch_size=2", "seed=3"))
    folder = next(out.rglob("000000.png")).parent
    g = _api(w)
    got = g.sample(indices=[0, 1], seed=3).numpy()
    for i in range(2):
        assert np.array_equal(got[i], _png_rgb(folder / f"{i:06d}.png")), (name, i)
    # the tokenizer round trip through the API: decode(encode(x)) is the tokenizer's reconstruction
    rec = g.decode(g.encode(got))
    assert rec.shape == got.shape and rec.dtype == torch.uint8


def test_grid_mask_any_pixel_regenerates_its_code():
    """2-D tokenizers max-pool the pixel mask by their factor; a column token covers a full-height strip."""
    from tokenizer.column import ColumnTokenizer, build_column_autoencoder
    from tokenizer.demo_vq import DemoVQTokenizer, build_demo_vq
    vq = DemoVQTokenizer(build_demo_vq("debug"))  # factor 4
    m = torch.zeros(1, 16, 16, dtype=torch.bool)
    m[0, 5, 9] = True  # one pixel: code (1, 2)
    g = vq.grid_mask(m)
    assert g.shape == (1, 4, 4) and g.sum() == 1 and g[0, 1, 2]
    col = ColumnTokenizer(build_column_autoencoder("debug"))
    d, h = col.downsample, col.height
    m = torch.zeros(2, h, 4 * d, dtype=torch.bool)
    m[0, h - 1, 2 * d] = True  # the bottom pixel of column 2
    g = col.grid_mask(m)
    assert g.shape == (2, 4) and g[0].tolist() == [False, False, True, False] and not g[1].any()
    with pytest.raises(ValueError, match="divisible"):
        vq.grid_mask(torch.zeros(1, 15, 16, dtype=torch.bool))


@pytest.mark.parametrize("name", ["nit", "eqar"])
def test_mode_edit_latent_families_one_and_two_processes(flow_world, tmp_path, name):
    """--mode edit of the latent families (NiT inpainting, the column AR's extension to the right: both regenerate
    the right half): the same files for 1 and 2 processes."""
    w = flow_world[name]
    g = _api(w)
    imgs = g.sample(indices=[0, 1, 2], seed=5).numpy()
    folder = tmp_path / "imgs"
    folder.mkdir()
    for k in range(3):
        Image.fromarray(imgs[k]).save(folder / f"img{k}.png")
    h, wd = imgs.shape[1:3]
    _same_edits_for_one_and_two_processes(w, tmp_path, folder, f"box:{wd // 2},0,{wd},{h}")
