"""The NiT README's sampling commands after `--config configs/nit_XL.yaml`: flag mapping onto the recipe, and each
command end to end through train.py on the debug recipe (random debug NiT in the released flat-safetensors layout,
tiny random DC-AE folder, seeded random FID-Inception weights), on 1 process and, for one, on 2 processes with
identical images. The output folder (`--sample-dir`) holds one PNG per image named by its global index."""
import json
import math
import shlex

import numpy as np
import pytest
import torch
from PIL import Image

import train
from tests.helpers import parse_train_args, run, torchrun_cmd

# projects/sample/sample_c2i_ddp.py commands of the NiT README (WZDTHU/NiT), verbatim
README = {
    256: r"""torchrun \
  --nnodes 1 \
  --nproc_per_node 8 \
  projects/sample/sample_c2i_ddp.py \
  --config configs/c2i/nit_xl_pack_merge_radio_16384.yaml \
  --ckpt checkpoints/model_1000K.safetensors \
  --sample-dir ./samples \
  --height 256 \
  --width 256 \
  --per-proc-batch-size 32 \
  --mode sde \
  --num-steps 250 \
  --cfg-scale 2.25 \
  --guidance-low 0.0 \
  --guidance-high 0.7 \
  --slice_vae \
""",
    512: r"""torchrun \
  --nnodes 1 \
  --nproc_per_node 8 \
  projects/sample/sample_c2i_ddp.py \
  --config configs/c2i/nit_xl_pack_merge_radio_16384.yaml \
  --ckpt checkpoints/model_1000K.safetensors \
  --sample-dir ./samples \
  --height 512 \
  --width 512 \
  --per-proc-batch-size 32 \
  --mode sde \
  --num-steps 250 \
  --cfg-scale 2.05 \
  --guidance-low 0.0 \
  --guidance-high 0.7 \
  --slice_vae \
""",
    768: r"""torchrun \
  --nnodes 1 \
  --nproc_per_node 8 \
  projects/sample/sample_c2i_ddp.py \
  --config configs/c2i/nit_xl_pack_merge_radio_16384.yaml \
  --ckpt checkpoints/model_1000K.safetensors \
  --sample-dir ./samples \
  --height 768 \
  --width 768 \
  --per-proc-batch-size 32 \
  --mode ode \
  --num-steps 50 \
  --cfg-scale 3.0 \
  --guidance-low 0.0 \
  --guidance-high 0.7 \
  --slice_vae \
""",
}
EXPECTED = {256: ("sde", 250, 2.25, 0.7), 512: ("sde", 250, 2.05, 0.7), 768: ("ode", 50, 3.0, 0.7)}
DEBUG = "configs/debug/nit_debug.yaml"


def readme_args(res: int, config: str = "configs/nit_XL.yaml") -> list[str]:
    """The flags after the official script, our recipe in place of the official config."""
    words = shlex.split(README[res].replace("\\\n", " "))
    args = words[words.index("projects/sample/sample_c2i_ddp.py") + 1:]
    args[args.index("--config") + 1] = config
    return args


@pytest.mark.parametrize("res", sorted(README))
def test_readme_command_maps_onto_the_recipe(monkeypatch, res):
    cfg, mode = parse_train_args(monkeypatch, readme_args(res))
    s = cfg.sample
    assert mode == "eval" and cfg.family == "nit" and cfg.model.flavour == "NiT_XL"
    assert (s.mode, s.steps, s.cfg_scale, s.guidance_low, s.guidance_high) == (*EXPECTED[res][:3], 0.0,
                                                                                 EXPECTED[res][3])
    assert (s.height, s.width) == (res, res) and cfg.eval.batch_size == 32
    assert cfg.eval.pretrained_path == "checkpoints/model_1000K.safetensors" and cfg.output_dir == "./samples"
    assert cfg.eval.decode_batch == 1  # --slice_vae: the DC-AE decodes one image at a time
    assert (cfg.tokenizer.kind, cfg.eval.n, cfg.eval.save_png, cfg.eval.save_npz) == ("dcae", 50000, -1, True)
    assert cfg.eval.png_dir == cfg.output_dir  # one PNG per image in --sample-dir, as the official sampler
    from models.nit_family import sample_settings
    with torch.device("meta"):
        from models import build_model
        model, _ = build_model(cfg)
    st = sample_settings(cfg, model)
    assert (st.mode, st.steps, st.cfg_scale, st.downsample, st.heun) == (*EXPECTED[res][:3], 32, False)


def test_other_official_flags(monkeypatch):
    argv = ["--config", "configs/nit_XL.yaml", "--mode", "ode", "--heun", "--num-fid-samples", "1000",
            "--global-seed", "7", "--cfg-scale", "1.0"]
    cfg, mode = parse_train_args(monkeypatch, argv)
    from models.nit_family import sample_settings
    st = sample_settings(cfg)
    assert mode == "eval" and st.heun and (cfg.eval.n, cfg.seed, st.cfg_scale) == (1000, 7, 1.0)
    with pytest.raises(ValueError, match="--heun is a corrector of the ODE sampler"):
        sample_settings(parse_train_args(monkeypatch, ["--config", "configs/nit_XL.yaml", "--heun"])[0])
    with pytest.raises(ValueError, match="sample.mode .--mode. must be one of ode, sde, got 'euler'"):
        sample_settings(parse_train_args(monkeypatch, ["--config", "configs/nit_XL.yaml", "--mode", "euler"])[0])


@pytest.fixture(scope="module")
def assets(tmp_path_factory, fid_weights):
    from tests.nit_helpers import write_eval_assets
    return write_eval_assets(tmp_path_factory.mktemp("nit_assets")), fid_weights


def debug_command(res: int, assets, out, steps: int = 2) -> list[str]:
    a, inc = assets
    args = readme_args(res, DEBUG)
    args[args.index("--ckpt") + 1] = str(a["weights"])
    args[args.index("--sample-dir") + 1] = str(out)
    args[args.index("--num-steps") + 1] = str(steps)
    args[args.index("--per-proc-batch-size") + 1] = "2"
    return args + [f"tokenizer.ckpt={a['dcae']}", f"eval.inception_weights={inc}", f"eval.ref_stats={a['ref']}",
                   "eval.n=3", "device=cpu"]


def _pngs(out) -> dict:
    (tag,) = (out / "eval").iterdir()
    files = sorted((tag / "png").iterdir())
    return {f.name: np.asarray(Image.open(f)) for f in files}, json.loads((tag / "result.json").read_text())


@pytest.mark.parametrize("res", sorted(README))
def test_readme_command_runs_on_the_debug_recipe(assets, tmp_path, res):
    assert train.main(debug_command(res, assets, tmp_path)) == 0
    pngs, result = _pngs(tmp_path)
    assert sorted(pngs) == ["000000.png", "000001.png", "000002.png"]
    assert all(a.shape == (res, res, 3) and a.dtype == np.uint8 for a in pngs.values())
    assert result["n"] == 3 and math.isfinite(result["fid"]) and result["provenance"]["sample"]["mode"] == \
        EXPECTED[res][0]


@pytest.mark.slow
def test_two_processes_write_the_same_images(assets, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert train.main(debug_command(256, assets, one)) == 0
    run(torchrun_cmd(2, *debug_command(256, assets, two)))
    (p1, r1), (p2, r2) = _pngs(one), _pngs(two)
    assert sorted(p1) == sorted(p2) and all(np.array_equal(p1[k], p2[k]) for k in p1)
    assert len({p1[k].tobytes() for k in p1}) == 3  # every image has its own noise
    assert r1["fid"] == pytest.approx(r2["fid"], rel=1e-6)


def test_accelerate_save_state_folder_as_ckpt(assets, tmp_path):
    """--ckpt <accelerate save_state folder> through train.py: model.safetensors (EMA) by default, model_1.safetensors
    (the online weights, `module.`-prefixed as accelerate saves the DDP model) with eval.use_ema=false. The two files
    hold different random models, so the images tell which one was read; both evals share one --sample-dir, where
    the second must not reuse the first one's finished units."""
    from safetensors.torch import save_file

    from models.nit import FLAVOURS
    from tests.nit_helpers import randomized
    a, _ = assets
    folder = tmp_path / "checkpoint-1000K"
    folder.mkdir()
    save_file(a["state_dict"], str(folder / "model.safetensors"))
    online = randomized(FLAVOURS["debug"](), seed=1).state_dict()
    save_file({f"module.{k}": v.contiguous() for k, v in online.items()}, str(folder / "model_1.safetensors"))

    def images(ckpt, out, *extra):
        args = debug_command(256, assets, out)
        for flag, value in (("--ckpt", ckpt), ("--height", "64"), ("--width", "64")):
            args[args.index(flag) + 1] = str(value)
        assert train.main(args + list(extra)) == 0
        tags = sorted((out / "eval").iterdir(), key=lambda p: p.stat().st_mtime)
        result = json.loads((tags[-1] / "result.json").read_text())
        return {f.name: np.asarray(Image.open(f)) for f in sorted((tags[-1] / "png").iterdir())}, result

    flat, _ = images(a["weights"], tmp_path / "flat")
    ema, r_ema = images(folder, tmp_path / "shared")
    online_imgs, r_online = images(folder, tmp_path / "shared", "eval.use_ema=false")
    assert r_ema["provenance"]["generator_weights"] == str(folder / "model.safetensors")
    assert r_online["provenance"]["generator_weights"] == str(folder / "model_1.safetensors")
    assert sorted(ema) == sorted(flat) == sorted(online_imgs) == ["000000.png", "000001.png", "000002.png"]
    assert all(np.array_equal(ema[k], flat[k]) for k in flat)  # the EMA file is the released flat file's model
    assert not any(np.array_equal(ema[k], online_imgs[k]) for k in ema)
