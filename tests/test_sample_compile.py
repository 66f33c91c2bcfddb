"""sample.compile through `train.py --mode eval` on the debug flavour of every sampling family: compiled sampling
makes the eager images (within a tolerance: compiled kernels add up in another order), `auto` says what it chose
and why, and without a C++ compiler `auto` samples eagerly (bit-identical) while `true` is refused (test_bad_input).

The first run compiles (tens of seconds per family on a CPU); inductor's cache makes later runs quick."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.helpers import ROOT, env

# mean |difference| of the uint8 pixels (of 255) and the share of pixels further apart than 8 levels: a sampled
# token that flips (mask-predict) changes a patch, not the picture
MEAN_TOL, FAR_SHARE = 2.0, 0.05


def _randomized(model, seed=0):
    """Every weight random (zero-initialised output layers would make every sample alike)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() == 1 else 1.0 / math.sqrt(p.shape[-1])))
    return model


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from engine.config import load_config
    from models import build_model
    from safetensors.torch import save_file
    from tokenizer.column import build_column_autoencoder
    from tokenizer.dcae import build_tiny_autoencoder_dc
    from tokenizer.demo_vq import build_demo_vq
    d = tmp_path_factory.mktemp("sample_compile")
    torch.manual_seed(0)
    torch.save({"model": build_demo_vq("debug").state_dict(), "family": "demo_vq",
                "config": {"model": {"flavour": "debug"}}}, d / "vq.pt")
    build_tiny_autoencoder_dc().save_pretrained(str(d / "dcae"))
    sd = build_column_autoencoder("debug").state_dict()
    torch.save({"family": "eqtok", "config": {"model": {"flavour": "debug"}}, "model": sd, "ema": sd, "step": 1},
               d / "column.pt")
    for fam, recipe in RECIPES.items():
        model, _ = build_model(load_config(ROOT / recipe))
        sd = {k: v.contiguous() for k, v in _randomized(model).state_dict().items()}
        save_file(sd, str(d / f"{fam}.safetensors")) if fam == "nit" else torch.save(sd, d / f"{fam}.pth")
    return d


RECIPES = {"nat": "configs/debug/autonat_debug.yaml", "enat": "configs/debug/enat_debug.yaml",
           "nit": "configs/debug/nit_debug.yaml", "eqar": "configs/debug/eqar_debug.yaml"}


def _args(fam, d, out) -> list[str]:
    common = ["--mode", "eval", f"output_dir={out}", "device=cpu", "eval.metrics=[]", "eval.save_png=-1",
              f"eval.png_dir={out}/png", "eval.n=4", "eval.batch_size=4"]
    if fam in ("nat", "enat"):
        return [*common, f"eval.pretrained_path={d / fam}.pth", f"tokenizer.ckpt={d / 'vq.pt'}"]
    if fam == "nit":  # two guided and unguided steps (two batch shapes) at 32 x 32
        return [*common, f"eval.pretrained_path={d / 'nit.safetensors'}", f"tokenizer.ckpt={d / 'dcae'}",
                "sample.height=32", "sample.width=32"]
    return [*common, f"eval.pretrained_path={d / 'eqar.pth'}", f"tokenizer.ckpt={d / 'column.pt'}"]


def _eval(fam, d, out, *extra, environ=None) -> tuple[np.ndarray, str]:
    cmd = [sys.executable, str(ROOT / "train.py"), "--config", RECIPES[fam], *_args(fam, d, out), *extra]
    p = subprocess.run(cmd, cwd=ROOT, env=environ or env(), capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"{' '.join(cmd)}\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    pngs = sorted((p_ for p_ in out.rglob("*.png") if p_.stem.isdigit()), key=lambda q: int(q.stem))
    assert len(pngs) == 4, pngs
    return np.stack([np.asarray(Image.open(q), dtype=np.int16) for q in pngs]), p.stderr


def _close(a: np.ndarray, b: np.ndarray) -> None:
    diff = np.abs(a - b)
    assert diff.mean() <= MEAN_TOL and (diff > 8).mean() <= FAR_SHARE, \
        f"mean |diff| {diff.mean():.3f}, share > 8 levels {(diff > 8).mean():.3f}"


@pytest.mark.parametrize("fam", list(RECIPES))
def test_compiled_sampling_makes_the_eager_images(world, tmp_path, fam):
    eager, log = _eval(fam, world, tmp_path / "eager")
    assert "sample.compile" not in log  # false: nothing installed
    compiled, log = _eval(fam, world, tmp_path / "compiled", "sample.compile=true")
    assert "sample.compile=true:" in log
    assert eager.std() > 0  # random weights: images that differ, so the comparison means something
    _close(eager, compiled)


def test_auto_measures_and_says_what_it_chose(world, tmp_path):
    eager, _ = _eval("nat", world, tmp_path / "eager")
    auto, log = _eval("nat", world, tmp_path / "auto", "sample.compile=auto")
    lines = [l for l in log.splitlines() if "sample.compile=auto: model [" in l]
    assert lines, log[-3000:]
    for line in lines:  # chosen, ms of both, compile seconds
        assert ("]: compiled (" in line or "]: eager (" in line) and "eager " in line and " ms, compiled " in line \
            and "compile " in line and line.rstrip().endswith(" s)"), line
    _close(eager, auto)


def test_auto_without_a_compiler_samples_eagerly(world, tmp_path):
    eager, _ = _eval("nat", world, tmp_path / "eager")
    e = {**env(), "CXX": str(tmp_path / "no-such-c++")}
    auto, log = _eval("nat", world, tmp_path / "auto", "sample.compile=auto", environ=e)
    assert "sample.compile=auto: eager sampling: no C++ compiler" in log, log[-3000:]
    assert np.array_equal(eager, auto)


def test_eqar_compiles_its_fast_path_whole(world, tmp_path):
    """The column AR's fast path (the default) is what gets compiled: its per-token step (once the window is full:
    6 tokens, window 3) and the flow head's whole Euler loop, each measured once by auto; the module path's
    functions are never called. Images within the tolerance of eager ones, with and without batched_head."""
    extra = ("sample.num_iter=6",)
    eager, _ = _eval("eqar", world, tmp_path / "eager", *extra)
    auto, log = _eval("eqar", world, tmp_path / "auto", *extra, "sample.compile=auto")
    lines = [line.split("sample.compile=auto: ", 1)[1] for line in log.splitlines()
             if "sample.compile=auto: " in line and "]: " in line]
    assert sorted(line.split(" [")[0] for line in lines) == ["flow_loop", "token_step"], log[-3000:]
    _close(eager, auto)
    batched, log = _eval("eqar", world, tmp_path / "batched", *extra, "sample.compile=true", "sample.batched_head=true")
    assert "sample.compile=true: token_step, flow_loop" in log
    _close(eager, batched)
