"""The NiT README's sampling commands after `--config configs/nit_XL.yaml`: flag mapping onto the recipe, and each
command end to end through train.py on the debug recipe (random debug NiT in the released flat-safetensors layout,
tiny random DC-AE folder), on 1 process and, for one, on 2 processes with identical images. As the official
sampler, a command writes images only (no Inception weights, no reference statistics needed): one PNG per image
named by its global index, in the folder of `--sample-dir` named by the settings; runs with other settings keep
their folders, and a folder with another run's images is refused."""
import json
import math
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import train
from tests.helpers import ROOT, env, parse_train_args, run, torchrun_cmd

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
# the sub-folder sample_c2i_ddp.py makes inside --sample-dir for each command
OFFICIAL_FOLDER = {256: "checkpoints-256x256-sde-250-cfg-2.25-low-0.0-high-0.7",
                   512: "checkpoints-512x512-sde-250-cfg-2.05-low-0.0-high-0.7",
                   768: "checkpoints-768x768-ode-50-cfg-3.0-low-0.0-high-0.7"}
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
    assert (cfg.tokenizer.kind, cfg.eval.n, cfg.eval.save_png, cfg.eval.save_npz) == ("dcae", 50000, -1, False)
    assert list(cfg.eval.metrics) == []  # images only, as sample_c2i_ddp.py
    assert cfg.eval.png_dir == cfg.output_dir  # one PNG per image in --sample-dir/<settings>, as the official sampler
    from models.nit.family import sample_folder
    assert sample_folder(cfg, (res, res), cfg.eval.pretrained_path) == OFFICIAL_FOLDER[res]
    from models.nit.family import sample_settings
    with torch.device("meta"):
        from models import build_model
        model, _ = build_model(cfg)
    st = sample_settings(cfg, model)
    assert (st.mode, st.steps, st.cfg_scale, st.downsample, st.heun) == (*EXPECTED[res][:3], 32, False)


def test_other_official_flags(monkeypatch):
    argv = ["--config", "configs/nit_XL.yaml", "--mode", "ode", "--heun", "--num-fid-samples", "1000",
            "--global-seed", "7", "--cfg-scale", "1.0"]
    cfg, mode = parse_train_args(monkeypatch, argv)
    from models.nit.family import sample_settings
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


def debug_command(res: int, assets, out, steps: int = 2, scored: bool = False) -> list[str]:
    """The README command on the debug recipe. Unscored, the Inception weights are a path that does not exist (a run
    that loaded them would fail); scored, seeded random weights and a reference file."""
    a, inc = assets
    args = readme_args(res, DEBUG)
    args[args.index("--ckpt") + 1] = str(a["weights"])
    args[args.index("--sample-dir") + 1] = str(out)
    args[args.index("--num-steps") + 1] = str(steps)
    args[args.index("--per-proc-batch-size") + 1] = "2"
    extra = [f"eval.inception_weights={inc}", f"eval.ref_stats={a['ref']}", "eval.metrics=[fid]"] if scored else \
        [f"eval.inception_weights={out}/no_inception.pth"]
    return args + [f"tokenizer.ckpt={a['dcae']}", *extra, "eval.n=3", "device=cpu"]


def _folder(assets, res, mode="sde", steps=2) -> str:
    """The official name: the last '-' piece of the checkpoint's folder (here nit_assets<N>), then the settings."""
    it = assets[0]["weights"].parent.name.split("-")[-1]
    return f"{it}-{res}x{res}-{mode}-{steps}-cfg-{EXPECTED[res][2]}-low-0.0-high-0.7"


def _pngs(out, folder=None) -> dict:
    """{name: image} of the run's PNG folder in --sample-dir (the only one, or `folder`), and its result.json."""
    dirs = [d for d in out.iterdir() if d.is_dir() and d.name != "eval"]
    d = next(x for x in dirs if x.name == folder) if folder else dirs[0]
    assert folder or len(dirs) == 1, dirs
    files = sorted(d.glob("*.png"))
    results = [json.loads(t.read_text()) for t in (out / "eval").glob("*/result.json")]
    result = next(r for r in results if r.get("png_dir") == str(d))
    return {f.name: np.asarray(Image.open(f)) for f in files}, result


def _train_py(args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, env=env(), capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("res", sorted(README))
def test_readme_command_runs_on_the_debug_recipe(assets, tmp_path, res):
    """No Inception weights, no reference statistics: the README command writes every image, as the official
    sampler, into the folder named by its settings."""
    p = _train_py(debug_command(res, assets, tmp_path))
    assert p.returncode == 0, p.stderr[-2000:]
    pngs, result = _pngs(tmp_path)
    assert sorted(d.name for d in tmp_path.iterdir() if d.is_dir()) == sorted(["eval", _folder(assets, res,
                                                                                               EXPECTED[res][0])])
    assert sorted(pngs) == ["000000.png", "000001.png", "000002.png"]
    assert all(a.shape == (res, res, 3) and a.dtype == np.uint8 for a in pngs.values())
    assert result["n"] == 3 and "fid" not in result and result["provenance"]["sample"]["mode"] == EXPECTED[res][0]
    assert result["provenance"]["inception_weights"] is None


def test_scored_run_and_missing_reference(assets, tmp_path):
    """With metrics the run scores; without the reference file the error names the README's ADM batch, how to
    make statistics and NiT's own flags."""
    assert train.main(debug_command(256, assets, tmp_path / "scored", scored=True)) == 0
    _, result = _pngs(tmp_path / "scored")
    assert math.isfinite(result["fid"])
    args = debug_command(256, assets, tmp_path / "noref", scored=True)
    args[args.index(f"eval.ref_stats={assets[0]['ref']}")] = f"eval.ref_stats={tmp_path / 'VIRTUAL.npz'}"
    p = _train_py(args)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "VIRTUAL_imagenet256_labeled.npz" in last and "scripts/make_fid_stats.py" in last
    assert "--reference_image_path" in last and "fmnist-test" not in last.split(";")[0]
    p = _train_py([*debug_command(256, assets, tmp_path / "one", scored=True), "eval.n=1"])
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and last.startswith("error: eval.n (--num-fid-samples) 1"), last


def test_two_settings_into_one_sample_dir_keep_both(assets, tmp_path):
    """The README's SDE and ODE commands share ./samples: each keeps its folder and images."""
    sde = debug_command(256, assets, tmp_path)
    assert _train_py(sde).returncode == 0
    before, _ = _pngs(tmp_path, _folder(assets, 256))
    ode = debug_command(256, assets, tmp_path)
    ode[ode.index("--mode") + 1] = "ode"
    p = _train_py(ode)
    assert p.returncode == 0, p.stderr[-2000:]
    after, _ = _pngs(tmp_path, _folder(assets, 256))
    other, _ = _pngs(tmp_path, _folder(assets, 256, "ode"))
    assert sorted(before) == sorted(after) == sorted(other) == ["000000.png", "000001.png", "000002.png"]
    assert all(np.array_equal(before[k], after[k]) for k in before)
    assert not all(np.array_equal(before[k], other[k]) for k in before)


def test_folder_of_another_run_is_refused(assets, tmp_path):
    """Settings the folder name does not show (here the seed): the folder of the first run is refused, untouched."""
    assert _train_py(debug_command(256, assets, tmp_path)).returncode == 0
    folder = tmp_path / _folder(assets, 256)
    stamp = {f.name: f.stat().st_mtime_ns for f in folder.iterdir()}
    p = _train_py([*debug_command(256, assets, tmp_path), "--global-seed", "5"])
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert last.startswith(f"error: {folder} holds 3 PNGs of another run (seed differ)") and "--sample-dir" in last
    assert {f.name: f.stat().st_mtime_ns for f in folder.iterdir()} == stamp
    # PNGs this project did not write (e.g. the official sampler's) are refused too
    (tmp_path / "official" / _folder(assets, 256)).mkdir(parents=True)
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "official" / _folder(assets, 256) / "000000.png")
    p = _train_py(debug_command(256, assets, tmp_path / "official"))
    assert p.returncode == 2 and "did not write" in p.stderr.strip().splitlines()[-1]


def test_rerun_with_new_png_dir_writes_it(assets, tmp_path):
    """A finished eval re-run with another eval.png_dir reuses its units and still writes every PNG there."""
    # a grid of 1: the second unit keeps no images, so its PNGs are sampled again for the new folder
    cmd = [*debug_command(256, assets, tmp_path), "sample.grid_classes=1", "sample.grid_per_class=1"]
    assert _train_py(cmd).returncode == 0
    first, _ = _pngs(tmp_path)
    p = _train_py([*cmd, f"eval.png_dir={tmp_path / 'elsewhere'}"])
    assert p.returncode == 0, p.stderr[-2000:]
    assert "resumed: 2 finished unit(s)" in (tmp_path / "log.txt").read_text()
    files = sorted((tmp_path / "elsewhere" / _folder(assets, 256)).glob("*.png"))
    assert [f.name for f in files] == sorted(first)
    assert all(np.array_equal(np.asarray(Image.open(f)), first[f.name]) for f in files)


@pytest.mark.slow
def test_two_processes_write_the_same_images(assets, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    assert train.main(debug_command(256, assets, one, scored=True)) == 0
    run(torchrun_cmd(2, *debug_command(256, assets, two, scored=True)))
    (p1, r1), (p2, r2) = _pngs(one), _pngs(two)
    assert sorted(p1) == sorted(p2) and all(np.array_equal(p1[k], p2[k]) for k in p1)
    assert len({p1[k].tobytes() for k in p1}) == 3  # every image has its own noise
    assert r1["fid"] == pytest.approx(r2["fid"], rel=1e-6)


def test_several_sizes_without_metrics_and_a_new_png_dir(assets, tmp_path):
    """sample.sizes on the README command: one folder per size, named as the official sampler names a run of that
    size; a re-run with a new eval.png_dir writes every size there from the finished units."""
    # a grid of 1: the second unit keeps no images, so its PNGs are sampled again for the new folder
    cmd = [*debug_command(256, assets, tmp_path), "sample.sizes=[64x64,64x96]", "sample.grid_classes=1",
           "sample.grid_per_class=1"]
    p = _train_py(cmd)
    assert p.returncode == 0, p.stderr[-2000:]
    it = assets[0]["weights"].parent.name
    names = {s: f"{it}-{s}-sde-2-cfg-2.25-low-0.0-high-0.7" for s in ("64x64", "64x96")}
    first = {s: {f.name: np.asarray(Image.open(f)) for f in sorted((tmp_path / n).glob("*.png"))}
             for s, n in names.items()}
    assert all(sorted(v) == ["000000.png", "000001.png", "000002.png"] for v in first.values())
    assert first["64x96"]["000001.png"].shape == (64, 96, 3)
    p = _train_py([*cmd, f"eval.png_dir={tmp_path / 'elsewhere'}"])
    assert p.returncode == 0, p.stderr[-2000:]
    for s, n in names.items():
        again = {f.name: np.asarray(Image.open(f)) for f in sorted((tmp_path / "elsewhere" / n).glob("*.png"))}
        assert sorted(again) == sorted(first[s]) and all(np.array_equal(again[k], first[s][k]) for k in again)


def test_accelerate_save_state_folder_as_ckpt(assets, tmp_path):
    """--ckpt <accelerate save_state folder> through train.py: model.safetensors (EMA) by default, model_1.safetensors
    (the online weights, `module.`-prefixed as accelerate saves the DDP model) with eval.use_ema=false. The two files
    hold different random models, so the images tell which one was read; both evals share one --sample-dir, where
    the second must not reuse the first one's finished units."""
    from safetensors.torch import save_file

    from models.nit.model import FLAVOURS
    from tests.nit_helpers import randomized
    a, _ = assets
    folder = tmp_path / "checkpoint-1000K"
    folder.mkdir()
    save_file(a["state_dict"], str(folder / "model.safetensors"))
    online = randomized(FLAVOURS["debug"](), seed=1).state_dict()
    save_file({f"module.{k}": v.contiguous() for k, v in online.items()}, str(folder / "model_1.safetensors"))

    def images(ckpt, out, pngs, *extra):
        args = debug_command(256, assets, out)
        for flag, value in (("--ckpt", ckpt), ("--height", "64"), ("--width", "64")):
            args[args.index(flag) + 1] = str(value)
        assert train.main(args + [f"eval.png_dir={pngs}", *extra]) == 0
        tags = sorted((out / "eval").iterdir(), key=lambda p: p.stat().st_mtime)
        result = json.loads((tags[-1] / "result.json").read_text())
        (named,) = [d for d in pngs.iterdir() if d.is_dir()]  # the folder named by the sampler settings
        return {f.name: np.asarray(Image.open(f)) for f in sorted(named.glob("*.png"))}, result

    flat, _ = images(a["weights"], tmp_path / "flat", tmp_path / "png_flat")
    ema, r_ema = images(folder, tmp_path / "shared", tmp_path / "png_ema")
    online_imgs, r_online = images(folder, tmp_path / "shared", tmp_path / "png_online", "eval.use_ema=false")
    assert r_ema["provenance"]["generator_weights"] == str(folder / "model.safetensors")
    assert r_online["provenance"]["generator_weights"] == str(folder / "model_1.safetensors")
    assert sorted(ema) == sorted(flat) == sorted(online_imgs) == ["000000.png", "000001.png", "000002.png"]
    assert all(np.array_equal(ema[k], flat[k]) for k in flat)  # the EMA file is the released flat file's model
    assert not any(np.array_equal(ema[k], online_imgs[k]) for k in ema)
