"""NiT editing (inpainting / outpainting): the family's `edit` over samplers.flow's kept region."""
import pytest
import torch

from engine.config import load_config
from models import build_model, get_family
from models.nit.family import NiTSampling
from models.nit.model import FLAVOURS
from samplers.flow import sample_nit
from tests.nit_helpers import randomized

DEBUG = "configs/debug/nit_debug.yaml"
FAM = get_family("nit")


def _model(**kw):
    torch.manual_seed(0)
    return randomized(FLAVOURS["debug"](**kw), seed=1)


def _gens(seeds=(10, 11)):
    return [torch.Generator().manual_seed(s) for s in seeds]


def _known(b, c, h, w, seed=5):
    return torch.randn(b, c, h, w, generator=torch.Generator().manual_seed(seed))


SETTINGS = {
    "ode": NiTSampling("ode", 3, 2.5, 0.0, 0.7, False, 64, 96, 32),
    "heun": NiTSampling("ode", 3, 2.5, 0.0, 0.7, True, 64, 96, 32),
    "sde": NiTSampling("sde", 4, 2.5, 0.2, 0.7, False, 64, 96, 32),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_nothing_kept_is_sample_and_kept_latents_stay(name):
    model, st = _model(), SETTINGS[name]
    labels = torch.tensor([3, 7])
    known = _known(2, 32, 2, 3)
    plain = FAM.sampling.sample(model, labels, _gens(), st)
    free = FAM.sampling.edit(model, known, torch.zeros(2, 2, 3, dtype=torch.bool), labels, _gens(), st)
    assert torch.equal(free, plain)  # bit for bit: editing draws no extra random numbers
    keep = torch.zeros(2, 2, 3, dtype=torch.bool)
    keep[0, :, :2] = True
    keep[1, 1, 1] = True
    out = FAM.sampling.edit(model, known, keep, labels, _gens(), st)
    assert out.shape == known.shape
    m = keep[:, None].expand_as(known)
    assert torch.equal(out[m], known[m])
    assert not torch.allclose(out[~m], plain[~m])  # the free part sees the kept one
    assert torch.equal(FAM.sampling.edit(model, known, torch.ones_like(keep), labels, _gens(), st), known)


@pytest.mark.parametrize("mode", ["ode", "sde"])
def test_kept_part_follows_the_training_interpolant(mode):
    """Each velocity call sees (1 - t) x0 + t xi on the kept part (t = 1 noise): xi the initial noise, and for the
    SDE from step 1 on the previous step's noise."""
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(6, 2, 1, 1, generator=g)
    eps = [torch.randn(6, 2, 1, 1, generator=g) for _ in range(3)]
    x0 = torch.randn(2, 2, 3, generator=g)
    keep = torch.tensor([[True, False, False], [False, True, True]])
    seen = []

    def velocity(x, t, guided):
        seen.append((t, x.clone()))
        return -x * 0.3 + t

    steps = 4
    out = sample_nit(velocity, None, grids=[(2, 3)], channels=2, mode=mode, steps=steps, noise=noise,
                     step_noise=eps if mode == "sde" else None, known=[x0], keep=[keep])[0]
    m = keep.flatten()
    kept = x0.flatten(1).T[m].double()
    assert len(seen) == steps
    for i, (t, x) in enumerate(seen):
        xi = noise if mode == "ode" or i == 0 else eps[i - 1]
        want = (1 - t) * kept + t * xi.flatten(1)[m].double()
        assert torch.equal(x.flatten(1)[m], want), (i, t)
    assert torch.equal(out[:, keep], x0[:, keep])


def test_outpainting_on_a_wider_canvas_and_rows_follow_their_generator():
    model, st = _model(), SETTINGS["ode"]
    image = _known(2, 32, 2, 2, seed=1)          # a 64x64 image's latents
    canvas = torch.zeros(2, 32, 2, 4)            # on a 64x128 canvas, image on the left
    canvas[..., :2] = image
    keep = torch.zeros(2, 2, 4, dtype=torch.bool)
    keep[..., :2] = True
    labels = torch.tensor([1, 4])
    out = FAM.sampling.edit(model, canvas, keep, labels, _gens(), st, size=(64, 128))
    assert out.shape == (2, 32, 2, 4) and torch.equal(out[..., :2], image) and torch.isfinite(out).all()
    alone = FAM.sampling.edit(model, canvas[1:], keep[1:], labels[1:], _gens((11,)), st)
    torch.testing.assert_close(alone[0], out[1], rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="disagrees with the known latents"):
        FAM.sampling.edit(model, canvas, keep, labels, _gens(), st, size=(64, 96))
    with pytest.raises(ValueError, match="keep row 0 must be Bool"):
        FAM.sampling.edit(model, canvas, keep.float(), labels, _gens(), st)


def test_several_canvas_sizes_in_one_batch_and_patches():
    model, st = _model(patch_size=2, in_channels=4), NiTSampling("sde", 3, 1.5, 0.0, 1.0, False, 64, 64, 16)
    known = [_known(1, 4, 4, 4, seed=2)[0], _known(1, 4, 4, 8, seed=3)[0]]
    keep = [torch.zeros(4, 4, dtype=torch.bool), torch.zeros(4, 8, dtype=torch.bool)]
    keep[1][:, :3] = True  # a kept region that cuts through 2x2 patches
    labels = torch.tensor([0, 9])
    out = FAM.sampling.edit(model, known, keep, labels, _gens(), st, size=[(64, 64), (64, 128)])
    plain = FAM.sampling.sample(model, labels, _gens(), st, size=[(64, 64), (64, 128)])
    assert torch.equal(out[0], plain[0])  # row 0 keeps nothing, row 1 does not touch it
    assert torch.equal(out[1][:, keep[1]], known[1][:, keep[1]]) and out[1].shape == (4, 4, 8)


def test_debug_recipe_edit_through_the_family_record():
    cfg = load_config(DEBUG)
    model, fam = build_model(cfg)
    model.eval()
    st = fam.sampling.settings(cfg, model)
    h, w = st.height // st.downsample, st.width // st.downsample
    known = _known(2, model.in_channels, h, w)
    keep = torch.zeros(2, h, w, dtype=torch.bool)
    keep[:, :, : w // 2] = True
    labels = torch.tensor([0, 1])
    out = fam.sampling.edit(model, known, keep, labels, _gens(), st)
    assert out.shape == known.shape and torch.equal(out[:, :, :, : w // 2], known[:, :, :, : w // 2])
    with pytest.raises(ValueError, match="sample.rng must be per_row"):
        cfg2 = load_config(DEBUG, ["sample.rng=official"])
        fam.sampling.edit(model, known, keep, labels, _gens(), fam.sampling.settings(cfg2, model))
