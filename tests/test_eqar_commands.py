"""The README's train_generator.py / eval_generator.py commands (verbatim text, paths made local, sizes shrunk to
debug) run through train.py with the eqar recipes; the official {'model', 'model_ema', ..., 'args'} container loads
strictly and its args are checked against the recipe (the README's own Places command trips the check)."""
import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import torch

from tests.helpers import ROOT, env, parse_train_args, torchrun_cmd

TRAIN = r"""torchrun --nproc_per_node=8 --nnodes=${NUM_NODES} --node_rank=${NODE_RANK} --master_addr=${MASTER_ADDR} \
    train_generator.py \
    --model MODEL --vae_embed_dim 256 --token_num 16 --num_iter 16 \
    --diffloss_d 12 --diffloss_w WIDTH --cond_length 3 EXTRA\
    --epochs 1200 --warmup_epochs 100 --batch_size 64 --blr 1.0e-4 --float32\
    --diffusion_batch_mul 4 --buffer_size 16 --vae_norm 0.05493 \ 
    --config_path configs/second_stage/tokenizer_config.yaml\
    --output_dir ${SAVE_PATH}  --resume ${RESUME_PATH} --ckpt ${CKPT_PATH}\
    --data_path DATA"""
TRAINS = {  # (model, diffloss_w, extra, data path) of the five README training commands
    "small": ("small_model", 960, "", "${IMAGENET_PATH}/autoencoders/data/ILSVRC2012_train/data/"),
    "base": ("base_model", 1024, "", "${IMAGENET_PATH}/autoencoders/data/ILSVRC2012_train/data/"),
    "large": ("large_model", 1280, "", "${IMAGENET_PATH}/autoencoders/data/ILSVRC2012_train/data/"),
    "huge": ("huge_model", 1536, "", "${IMAGENET_PATH}/autoencoders/data/ILSVRC2012_train/data/"),
    "places": ("large_model", 1280, "--class_num 30", "${PLACES_PATH}"),
}
EVAL_IMAGENET = r"""torchrun --nproc_per_node=8 --nnodes=1 --master_addr=${MASTER_ADDR} \
    eval_generator.py \
    --model huge_model --vae_embed_dim 256 --token_num 16 --num_iter 16 \
    --diffloss_d 12 --diffloss_w 1536 --cond_length 3 \
    --eval_bsz 64 --float32\
    --diffusion_batch_mul 4 --buffer_size 16 --vae_norm 0.05493 \ 
    --config_path configs/second_stage/tokenizer_config.yaml\
    --output_dir ${SAVE_PATH} --resume ${RESUME_PATH} --ckpt ${CKPT_PATH} \
    --num_images 50000 --cfg 7.0 \ """
EVAL_PLACES = r"""torchrun --nproc_per_node=8 --nnodes=1 --master_addr=${MASTER_ADDR} \
    eval_generator.py \
    --model large_model --vae_embed_dim 256 --token_num ${LENGTH} --num_iter ${LENGTH} \
    --diffloss_d 12 --diffloss_w 1024 --cond_length 3 --class_num 30\
    --eval_bsz 64 --float32\
    --diffusion_batch_mul 4 --buffer_size 16 --vae_norm 0.05493 \ 
    --config_path configs/second_stage/tokenizer_config.yaml\
    --output_dir ${SAVE_PATH} --resume ${RESUME_PATH} --ckpt ${CKPT_PATH} \
    --num_images 3000 --cfg 7.0 \ """
RECIPE = {"small": "configs/eqar_small.yaml", "base": "configs/eqar_base.yaml", "large": "configs/eqar_large.yaml",
          "huge": "configs/eqar_huge.yaml", "places": "configs/eqar_places_large.yaml"}
# the debug-size stand-ins: every released width divided by 32 keeps equal widths equal and different ones different
DEBUG_SIZES = {"--model": "debug", "--diffloss_d": "2", "--epochs": "1", "--warmup_epochs": "1", "--batch_size": "2",
               "--num_images": "4", "--eval_bsz": "2"}
LOCAL = ["data.image_size=16", "data.column_width=4", "train.ckpt_every=1000", "sample.num_sampling_steps=3",
         "sample.grid_classes=2", "sample.grid_per_class=1", "eval.inception_dtype=fp32"]


def readme_args(text: str, paths: dict, recipe: str) -> list[str]:
    """The README command after its script name, with ${VARS} substituted and debug sizes swapped in."""
    for k, v in paths.items():
        text = text.replace("${" + k + "}", str(v))
    words = shlex.split(text.replace("\\\n", " ").replace("\\ \n", " "))
    words = [w for w in words if w.strip() not in ("", "\\")]  # line-continuation artefacts of the README text
    script = next(i for i, w in enumerate(words) if w.endswith(".py"))
    words = words[script + 1:]
    for i, w in enumerate(words[:-1]):
        if w in DEBUG_SIZES:
            words[i + 1] = DEBUG_SIZES[w]
        elif w == "--diffloss_w":
            words[i + 1] = str(int(words[i + 1]) // 32)
    return ["--config", recipe, *words]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A local image folder (2 classes), a debug column tokenizer (256-d tokens) and the official tokenizer YAML
    that names it, FID-Inception stand-in weights and reference statistics."""
    root = tmp_path_factory.mktemp("eqar_cmd")
    from PIL import Image
    rng = np.random.default_rng(0)
    for c in ("a_class", "b_class"):
        (root / "images" / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 255, (20 + i, 70, 3), dtype=np.uint8)).save(root / "images" / c / f"{i}.png")
    from tokenizer.column import build_column_autoencoder, COLUMN_CONFIGS
    torch.manual_seed(0)
    ae = build_column_autoencoder({**COLUMN_CONFIGS["debug"], "embed_dim": 256})
    sd = ae.state_dict()
    torch.save({"family": "eqtok", "config": {"model": {"flavour": "debug", "embed_dim": 256}}, "model": sd,
                "ema": sd, "step": 1}, root / "tokenizer.pt")
    (root / "tokenizer_config.yaml").write_text(f"model:\n  params:\n    ckpt_path: {root / 'tokenizer.pt'}\n")
    from metrics import save_stats
    from metrics.inception import FIDInception
    torch.save(FIDInception().state_dict(), root / "inception.pth")
    f = rng.standard_normal((64, 2048))
    save_stats(root / "ref.npz", f.mean(0), np.cov(f, rowvar=False))
    return root


def _paths(world, name, **kw):
    return {"NUM_NODES": 1, "NODE_RANK": 0, "MASTER_ADDR": "localhost", "SAVE_PATH": world / name,
            "RESUME_PATH": world / name / "checkpoints", "CKPT_PATH": "step_0000003.pt",
            "IMAGENET_PATH": world / "imagenet", "PLACES_PATH": world / "images", **kw}


def _fix_config_path(args, world):
    i = args.index("--config_path")
    return args[:i + 1] + [str(world / "tokenizer_config.yaml")] + args[i + 2:]


def _train_args(world, name):
    model, width, extra, data = TRAINS[name]
    text = TRAIN.replace("MODEL", model).replace("WIDTH", str(width)).replace("EXTRA", extra).replace("DATA", data)
    args = _fix_config_path(readme_args(text, _paths(world, name), RECIPE[name]), world)
    i = args.index("--data_path")
    args[i + 1] = str(world / "images")  # both README data paths point at the local folder
    return args


def _eval_local(world):
    """Scored: stand-in Inception weights and reference statistics, FID."""
    return [f"eval.inception_weights={world / 'inception.pth'}", f"eval.ref_stats={world / 'ref.npz'}",
            "eval.metrics=[fid]"]


def _unscored(world):
    """Images only: Inception weights at a path that does not exist (a run that loaded them would fail)."""
    return [f"eval.inception_weights={world / 'no_inception.pth'}"]


def _official_folder(tokens, ckpt="step_0000003.pt", n=4):
    """eval_generator.py's folder inside --output_dir (debug --num_sampling_steps 3; --cfg 7.0 of the README)."""
    return f"ariter{tokens}-diffsteps3-temp1.0-{ckpt}-linearcfg7.0-image{n}_ema"


def test_readme_flags_map_onto_the_recipe(world, monkeypatch):
    cfg, mode = parse_train_args(monkeypatch, [*_train_args(world, "places"), *LOCAL])
    assert mode == "pretrain" and cfg.family == "eqar" and cfg.model.flavour == "debug"
    assert (cfg.model.class_num, cfg.model.diffloss_w, cfg.model.buffer_size, cfg.model.cond_length,
            cfg.model.vae_embed_dim, cfg.model.diffusion_batch_mul) == (30, 40, 16, 3, 256, 4)
    assert (cfg.train.epochs, cfg.train.batch_size_per_rank, cfg.train.blr) == (1, 2, 1.0e-4)
    assert cfg.tokenizer.vae_norm == 0.05493 and cfg.tokenizer.ckpt == str(world / "tokenizer.pt")
    assert cfg.eval.pretrained_path == str(world / "places" / "checkpoints" / "step_0000003.pt")
    assert cfg.data.token_num == 16 and cfg.sample.num_iter == 16


def _main(args):
    import train
    assert train.main(args) == 0, args


@pytest.mark.parametrize("name", list(TRAINS))
def test_readme_train_command_runs(world, name):
    _main([*_train_args(world, name), *LOCAL])
    out = world / name
    logs = [json.loads(l) for l in (out / "metrics.jsonl").read_text().splitlines()]
    # 6 images, 2 per step on 1 process: 1 epoch = 3 steps; warm-up 1 epoch; lr = blr x 2 / 256
    assert logs[-1]["step"] == 3 and np.isfinite(logs[-1]["loss"])
    assert logs[-1]["lr"] == pytest.approx(1e-4 * 2 / 256)
    state = torch.load(out / "checkpoints" / "step_0000003.pt", weights_only=True)
    assert state["config"]["train"]["steps"] == 3 and state["config"]["train"]["batch_size"] == 2
    assert state["model"]["class_emb.weight"].shape[0] == (30 if name == "places" else 1000)
    assert state["model"]["diffloss.net.input_proj.weight"].shape == (TRAINS[name][1] // 32, 256)


def _eval_images(out: Path) -> torch.Tensor:
    """The eval's PNGs (one per image, by global index, in the folder named by the settings) as uint8 [N, C, H, W]."""
    (folder,) = out.glob("ariter*")
    files = sorted(folder.glob("*.png"))
    return torch.stack([torch.from_numpy(np.asarray(Image.open(f))).permute(2, 0, 1) for f in files])


def test_readme_eval_commands_run(world):
    if not (world / "huge" / "checkpoints" / "step_0000003.pt").exists():
        _main([*_train_args(world, "huge"), *LOCAL])
    args = _fix_config_path(readme_args(EVAL_IMAGENET, _paths(world, "huge", SAVE_PATH=world / "huge_eval",
                                                              RESUME_PATH=world / "huge" / "checkpoints"),
                                        RECIPE["huge"]), world)
    _main([*args, *LOCAL, *_unscored(world)])  # as the README gives it: no --mode, no Inception, no statistics
    imgs = _eval_images(world / "huge_eval")
    assert imgs.shape == (4, 3, 16, 64) and imgs.dtype == torch.uint8
    assert (world / "huge_eval" / _official_folder(16)).is_dir()
    # --metrics (the release's switch): FID and IS of the same images
    _main([*args, "--metrics", *LOCAL, *_eval_local(world)[:2], "eval.is_splits=2"])
    (res,) = [json.loads(p.read_text()) for p in (world / "huge_eval" / "eval").glob("*/result.json") if
              "fid" in json.loads(p.read_text())]
    assert np.isfinite(res["fid"]) and np.isfinite(res["is"])

    # Places long images: LENGTH tokens at eval (4x the 16 trained); the README's --diffloss_w 1024 is corrected
    # to the trained 1280 (see test_official_args_mismatch_is_one_line for the uncorrected command)
    if not (world / "places" / "checkpoints" / "step_0000003.pt").exists():
        _main([*_train_args(world, "places"), *LOCAL])
    text = EVAL_PLACES.replace("--diffloss_w 1024", "--diffloss_w 1280")
    args = _fix_config_path(readme_args(text, _paths(world, "places", SAVE_PATH=world / "places_eval", LENGTH=64,
                                                     RESUME_PATH=world / "places" / "checkpoints"),
                                        RECIPE["places"]), world)
    _main([*args, *LOCAL, *_unscored(world)])
    imgs = _eval_images(world / "places_eval")
    assert imgs.shape == (4, 3, 16, 256)
    assert (world / "places_eval" / _official_folder(64)).is_dir()


def test_eval_flags_select_eval(world, monkeypatch):
    """Without --mode, the README's eval command is an eval (its --eval_bsz --num_images --cfg are eval_generator.py
    flags), the training command a training run; flags of both scripts at once ask for --mode."""
    ev = _fix_config_path(readme_args(EVAL_IMAGENET, _paths(world, "huge"), RECIPE["huge"]), world)
    assert parse_train_args(monkeypatch, [*ev, *LOCAL])[1] == "eval"
    assert parse_train_args(monkeypatch, [*_train_args(world, "small"), *LOCAL])[1] == "pretrain"
    assert parse_train_args(monkeypatch, [*ev, "--data_path", "x", "--mode", "pretrain", *LOCAL])[1] == "pretrain"
    p = subprocess.run([sys.executable, "train.py", *ev, "--data_path", str(world / "images"), *LOCAL], cwd=ROOT,
                       env=env(), capture_output=True, text=True, timeout=300)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert last.startswith("error: the flags --eval_bsz (eval) and --data_path (pretrain)") and "--mode" in last


@pytest.mark.parametrize("content", [None, "model:\n  params:\n    embed_dim: 256\n"])
def test_config_path_is_read_or_refused(world, content):
    """--config_path is the official tokenizer YAML: its model.params.ckpt_path is the tokenizer (tested in
    test_readme_flags_map_onto_the_recipe); a YAML that is missing or names no checkpoint is one line, not a silent
    fall-back to the default tokenizer file."""
    path = world / "cfgs" / "tokenizer_config.yaml"
    if content is not None:
        path.parent.mkdir(exist_ok=True)
        path.write_text(content)
    ev = readme_args(EVAL_IMAGENET, _paths(world, "huge"), RECIPE["huge"])
    ev[ev.index("--config_path") + 1] = str(path if content is not None else world / "nowhere.yaml")
    p = subprocess.run([sys.executable, "train.py", *ev, *LOCAL], cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=300)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and "Traceback" not in p.stderr and last.startswith("error: --config_path "), p.stderr
    assert ("is not a file" if content is None else "has no model.params.ckpt_path") in last


def _official_container(world, src: Path, dst: Path, **args_over):
    """Our checkpoint re-packed as the release writes it (util.misc.save_model), args as the README passes them."""
    ours = torch.load(src, weights_only=True)
    args = argparse.Namespace(model="debug", vae_embed_dim=256, token_num=16, num_iter=16, diffloss_d=2,
                              diffloss_w=40, cond_length=3, class_num=30, buffer_size=16, diffusion_batch_mul=4,
                              vae_norm=0.05493, label_drop_prob=0.1, epochs=1200, blr=1e-4)
    for k, v in args_over.items():
        setattr(args, k, v)
    live = {k: v + 1.0 for k, v in ours["model"].items()}  # 'model' differs from 'model_ema': which one is used shows
    torch.save({"model": live, "model_ema": ours["ema"], "optimizer": ours["optimizer"], "epoch": 1199,
                "scaler": {}, "args": args}, dst)


def _run_places_eval(world, ckpt: Path, diffloss_w=1280, extra=()):
    text = EVAL_PLACES.replace("--diffloss_w 1024", f"--diffloss_w {diffloss_w}")
    args = _fix_config_path(readme_args(text, _paths(world, "places", SAVE_PATH=world / f"off_{ckpt.stem}",
                                                     LENGTH=16, RESUME_PATH=ckpt.parent, CKPT_PATH=ckpt.name),
                                        RECIPE["places"]), world)
    cmd = ["train.py", *args, *LOCAL, *_eval_local(world), *extra]
    return subprocess.run([sys.executable, *cmd], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=300)


def test_official_container_loads_strictly_and_samples_with_model_ema(world):
    if not (world / "places" / "checkpoints" / "step_0000003.pt").exists():
        _main([*_train_args(world, "places"), *LOCAL])
    off = world / "official" / "places_large.ckpt"
    off.parent.mkdir(exist_ok=True)
    _official_container(world, world / "places" / "checkpoints" / "step_0000003.pt", off)
    from models import build_model
    from engine.generate import load_weights
    from engine.config import load_config
    cfg = load_config(RECIPE["places"], [*LOCAL, "model.flavour=debug", "model.diffloss_d=2", "model.diffloss_w=40",
                                         f"eval.pretrained_path={off}"])
    model, fam = build_model(cfg)
    load_weights(model, cfg, fam.name)
    ema = torch.load(off, weights_only=True)["model_ema"]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in ema.items())
    # a key short: one line naming it
    sd = dict(ema)
    sd.pop("fake_latent")
    torch.save({"model": sd, "model_ema": sd, "args": argparse.Namespace()}, world / "official" / "broken.ckpt")
    p = _run_places_eval(world, world / "official" / "broken.ckpt")
    assert p.returncode == 2 and p.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "fake_latent" in p.stderr.strip().splitlines()[-1] and "Traceback" not in p.stderr


@pytest.mark.parametrize("over,flag", [({}, "diffloss_w"), ({"model": "large_model"}, "model"), ({"cond_length": 0}, "cond_length"),
                                       ({"diffusion_batch_mul": 1}, "diffusion_batch_mul"),
                                       ({"vae_norm": 0.2325}, "vae_norm")])
def test_official_args_mismatch_is_one_line(world, over, flag):
    if not (world / "places" / "checkpoints" / "step_0000003.pt").exists():
        _main([*_train_args(world, "places"), *LOCAL])
    off = world / "official" / f"args_{flag}.ckpt"
    off.parent.mkdir(exist_ok=True)
    _official_container(world, world / "places" / "checkpoints" / "step_0000003.pt", off, **over)
    # no override: the README's Places command itself, whose --diffloss_w 1024 does not fit the 1280-wide weights
    p = _run_places_eval(world, off, diffloss_w=1024 if not over else 1280)
    last = p.stderr.strip().splitlines()[-1]
    assert p.returncode == 2 and "Traceback" not in p.stderr, p.stderr[-2000:]
    assert last.startswith("error: ") and f"--{flag}" in last and str(off) in last, last


@pytest.mark.slow
def test_two_processes_train_and_eval_identical_images(world):
    args = _train_args(world, "small")
    args[args.index("--output_dir") + 1] = str(world / "small2")
    args[args.index("--resume") + 1] = str(world / "small2" / "checkpoints")  # a run resumes from its own folder
    p = subprocess.run(torchrun_cmd(2, *args, *LOCAL), cwd=ROOT, env=env(), capture_output=True, text=True,
                       timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    logs = [json.loads(l) for l in (world / "small2" / "metrics.jsonl").read_text().splitlines()]
    # per-GPU --batch_size 2 on 2 processes: global batch 4, 6 images -> 1 step per epoch, lr = blr x 4 / 256
    assert logs[-1]["step"] == 1 and logs[-1]["lr"] == pytest.approx(1e-4 * 4 / 256)
    images = []
    for nproc in (1, 2):
        out = world / f"small2_eval{nproc}"
        ev = _fix_config_path(readme_args(EVAL_IMAGENET, _paths(world, "x", SAVE_PATH=out, CKPT_PATH="step_0000001.pt",
                                                                RESUME_PATH=world / "small2" / "checkpoints"),
                                          RECIPE["small"]), world)
        ev[ev.index("--diffloss_w") + 1] = str(960 // 32)
        p = subprocess.run(torchrun_cmd(nproc, *ev, *LOCAL, *_unscored(world)), cwd=ROOT,
                           env=env(), capture_output=True, text=True, timeout=300)
        assert p.returncode == 0, p.stderr[-3000:]
        images.append(_eval_images(out))
    assert images[0].shape == (4, 3, 16, 64) and torch.equal(images[0], images[1])
    assert len({tuple(x.flatten().tolist()) for x in images[0]}) == 4


def test_eval_size_sets_the_width_and_is_recorded(world):
    """eval.size=[H, W] asks for W / column width tokens; H is the tokenizer's (another height is refused before
    anything loads: tests/test_bad_input.py, eqar-eval-size-height) and result.json records the size sampled."""
    if not (world / "huge" / "checkpoints" / "step_0000003.pt").exists():
        _main([*_train_args(world, "huge"), *LOCAL])
    args = _fix_config_path(readme_args(EVAL_IMAGENET, _paths(world, "huge", SAVE_PATH=world / "huge_size",
                                                              RESUME_PATH=world / "huge" / "checkpoints"),
                                        RECIPE["huge"]), world)
    _main([*args, "--mode", "eval", *LOCAL, *_eval_local(world), "eval.size=[16,32]"])
    assert _eval_images(world / "huge_size").shape == (4, 3, 16, 32)
    (result,) = (world / "huge_size" / "eval").glob("*/result.json")
    assert json.loads(result.read_text())["provenance"]["size"] == [16, 32]
