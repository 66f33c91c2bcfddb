"""sample.rng=official for NiT: on one process, --global-seed S replays the official sampling script's random stream.

The reference below is written from the description of the official script and samplers (not from our sampler):
torch.manual_seed(S · world_size + rank) once; per batch of --per-proc-batch-size n images (every batch full), the
noise randn((n, C, h, w)) drawn in bf16, then the labels randint(0, 1000, (n,)), the noise packed row-major to
tokens '(b h w) c 1 1'; float64 state; Euler–Maruyama on linspace(1, 0.04, steps) then 0, each of the first
steps − 1 steps drawing ε = randn_like(state) (float64) before the model call, w_t = 2t, score
s = −(x + (1 − t)·v)/t, drift d = v − ½·w_t·s, x ← x + d·dt + sqrt(w_t)·sqrt(|dt|)·ε; the last step 0.04 → 0
deterministic; guidance u + w·(c − u) with the pack doubled (labels [y; 1000]) iff guidance_low <= t <= high.
The model gets the state in float32 (our numerics; the official script runs it in bf16)."""
import math
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config import load_config
from models.nit.model import FLAVOURS
from tests.helpers import ROOT, run

DEBUG = "configs/debug/nit_debug.yaml"
H, W = 64, 96  # DC-AE f32: a 2 x 3 token grid


@pytest.fixture(scope="module")
def assets(tmp_path_factory, fid_weights):
    from tests.nit_helpers import write_eval_assets
    return write_eval_assets(tmp_path_factory.mktemp("nit_rng")), fid_weights


def _model(sd):
    model = FLAVOURS["debug"]()
    model.load_state_dict(sd)
    return model.eval()


def official_script(model, seed, n_images, bs, mode, steps, w, low, high, heun=False):
    """[(latents (bs, C, h, w), labels (bs,))] per batch of the official single-process run."""
    h, wl, c = H // 32, W // 32, 32
    out = []
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed * 1 + 0)  # global_seed * world_size + rank
        for _ in range(math.ceil(n_images / bs)):
            z = torch.randn((bs, c, h, wl), dtype=torch.bfloat16)
            y = torch.randint(0, 1000, (bs,))
            hw = torch.tensor([[h, wl]] * bs, dtype=torch.int32)
            x = z.permute(0, 2, 3, 1).reshape(bs * h * wl, c, 1, 1).to(torch.float64)

            def vel(x, t, t_decide=None):
                t_decide = t if t_decide is None else t_decide
                if w != 1.0 and low <= t_decide <= high:
                    o = model(torch.cat([x, x]).float(), torch.full((2 * bs,), t, dtype=torch.float64),
                              torch.cat([y, torch.full_like(y, 1000)]), torch.cat([hw, hw])).double()
                    cond, uncond = o.chunk(2)
                    return uncond + w * (cond - uncond)
                return model(x.float(), torch.full((bs,), t, dtype=torch.float64), y, hw).double()

            def drift(x, t):
                v = vel(x, t)
                s = -(x + (1 - t) * v) / t
                return v - 0.5 * (2 * t) * s

            if mode == "sde":
                grid = torch.linspace(1, 0.04, steps, dtype=torch.float64).tolist() + [0.0]
                for t, t_next in zip(grid[:-2], grid[1:-1]):
                    eps = torch.randn_like(x)
                    dt = t_next - t
                    x = x + drift(x, t) * dt + math.sqrt(2 * t) * math.sqrt(abs(dt)) * eps
                x = x + (grid[-1] - grid[-2]) * drift(x, grid[-2])
            else:
                grid = torch.linspace(1, 0, steps + 1, dtype=torch.float64).tolist()
                for i, (t, t_next) in enumerate(zip(grid[:-1], grid[1:])):
                    d = vel(x, t)
                    x_next = x + (t_next - t) * d
                    if heun and i < steps - 1:
                        x_next = x + (t_next - t) * (0.5 * d + 0.5 * vel(x_next, t_next, t))
                    x = x_next
            out.append((x.float().reshape(bs, h, wl, c).permute(0, 3, 1, 2), y))
    return out


def _cfg(tmp_path, mode, steps, w, heun=False, *extra):
    return load_config(DEBUG, [f"output_dir={tmp_path}", f"sample.mode={mode}", f"sample.steps={steps}",
                               f"sample.cfg_scale={w}", "sample.guidance_high=0.7", f"sample.heun={str(heun).lower()}",
                               f"sample.height={H}", f"sample.width={W}", "seed=5", "sample.rng=official",
                               "eval.batch_size=2", *extra])


@pytest.mark.parametrize("mode,steps,w,heun", [("sde", 5, 2.5, False), ("ode", 3, 3.0, True), ("sde", 3, 1.0, False)])
def test_family_sample_replays_the_official_stream(assets, tmp_path, mode, steps, w, heun):
    """Three batches in order (the last one short: sampled as a full batch and cut), latents and labels."""
    from models.nit.family import family_replay, family_sample, sample_settings
    model = _model(assets[0]["state_dict"])
    cfg = _cfg(tmp_path, mode, steps, w, heun)
    st = sample_settings(cfg, model)
    assert st.sequential
    want = official_script(model, 5, 5, 2, mode, steps, w, 0.0, 0.7, heun)
    for rows, (lat, y) in zip((2, 2, 1), want):
        got, labels = family_replay(model, torch.zeros(rows, dtype=torch.long), st)
        assert torch.equal(labels, y[:rows])
        torch.testing.assert_close(got, lat[:rows], rtol=0, atol=1e-5)
    # the per-row default does not follow this stream
    per_row = sample_settings(load_config(DEBUG, [f"sample.mode={mode}", f"sample.steps={steps}",
                                                  f"sample.cfg_scale={w}", f"sample.height={H}",
                                                  f"sample.width={W}"]), model)
    other = family_sample(model, want[0][1], [torch.Generator().manual_seed(s) for s in (0, 1)], per_row)
    assert (other - want[0][0]).abs().max() > 1e-2


def test_train_py_eval_writes_the_official_images(assets, tmp_path):
    """`train.py --mode eval ... --mode sde --global-seed 5 sample.rng=official` (a subprocess): the PNGs are the
    official run's images (decoded by the same DC-AE) and samples.npz holds its labels."""
    a, inc = assets
    out = tmp_path / "out"
    run([sys.executable, str(ROOT / "train.py"), "--config", DEBUG, "--ckpt", str(a["weights"]), "--sample-dir",
         str(out), "--height", str(H), "--width", str(W), "--per-proc-batch-size", "2", "--mode", "sde",
         "--num-steps", "4", "--cfg-scale", "2.5", "--guidance-low", "0.0", "--guidance-high", "0.7",
         "--global-seed", "5", "sample.rng=official", "eval.n=3", f"tokenizer.ckpt={a['dcae']}",
         f"eval.inception_weights={inc}", f"eval.ref_stats={a['ref']}", "eval.save_npz=true", "device=cpu"])
    (tag,) = (out / "eval").iterdir()
    (folder,) = out.glob("*-sde-4-cfg-2.5-low-0.0-high-0.7")  # named by the settings, as the official sampler
    pngs = [np.asarray(Image.open(folder / f"{i:06d}.png")) for i in range(3)]
    want = official_script(_model(a["state_dict"]), 5, 3, 2, "sde", 4, 2.5, 0.0, 0.7)
    from core.images import to_uint8
    from tokenizer import build_tokenizer
    tok = build_tokenizer("dcae", ckpt=str(a["dcae"])).eval()
    with torch.no_grad():
        imgs = to_uint8(tok.decode(torch.cat([lat for lat, _ in want])[:3])).permute(0, 2, 3, 1).numpy()
    for got, ref in zip(pngs, imgs):
        assert got.shape == (H, W, 3)
        assert np.abs(got.astype(int) - ref.astype(int)).max() <= 1  # float rounding at most
    assert len({p.tobytes() for p in pngs}) == 3
    labels = np.load(tag / "samples.npz")["arr_1"]
    np.testing.assert_array_equal(labels, torch.cat([y for _, y in want])[:3].numpy())


def test_official_rng_needs_one_process(monkeypatch):
    from core import dist
    from models.nit.family import sample_settings
    monkeypatch.setattr(dist, "world_size", lambda: 2)
    with pytest.raises(ValueError, match="sample.rng=official .* run with 1 process, not 2"):
        sample_settings(load_config(DEBUG, ["sample.rng=official"]))
    with pytest.raises(ValueError, match="sample.rng must be one of per_row, official, got 'global'"):
        sample_settings(load_config(DEBUG, ["sample.rng=global"]))
