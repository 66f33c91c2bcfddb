"""NiT's training path end to end: per-image latent files + a data-meta written with datasets/latent_writer.py,
packed by the LPFHP tool (scripts/pack_dataset.py), trained through train.py on 2 processes (one pack per rank per
step), killed after a checkpoint and resumed: the losses equal those of the uninterrupted run."""
import json
import os
import subprocess
import sys

import pytest

from tests.helpers import ROOT, env, interrupt_after_checkpoint, read_metrics, run, torchrun_cmd
from tests.nit_helpers import write_eval_assets, write_latent_dataset

DEBUG = "configs/debug/nit_debug.yaml"
# 26 images of 7 sizes (square "fixed" ones and non-square "native" ones): 4 to 20 tokens each
SHAPES = [(2, 2)] * 8 + [(3, 3)] * 4 + [(4, 4)] * 4 + [(2, 3)] * 3 + [(3, 2)] * 3 + [(4, 5)] * 2 + [(5, 3)] * 2


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("nit_train")
    root, meta, _ = write_latent_dataset(d, SHAPES, [k % 5 for k in range(len(SHAPES))], channels=32)
    p = subprocess.run([sys.executable, str(ROOT / "scripts" / "pack_dataset.py"), "--data-meta", meta,
                        "--max-seq-len", "32"], cwd=ROOT, env=env(), capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    packs_file = os.path.join(os.path.dirname(meta), "x_merge_LPFHP_32.json")
    assert "packing efficiency" in p.stdout and os.path.isfile(packs_file)
    packs = json.load(open(packs_file))
    assert sorted(i for pack in packs for i in pack) == list(range(len(SHAPES)))
    assets = write_eval_assets(d)
    return [f"data.data_meta={meta}", f"data.sampler_meta={packs_file}", f"data.latent_dirs={root}"], packs, assets


COMMON = ["train.steps=12", "train.ckpt_every=4", "train.log_every=1", "train.batch_size=2", "device=cpu"]


@pytest.mark.slow
def test_two_process_training_killed_and_resumed_matches(data, tmp_path):
    args, packs, assets = data
    a, b = tmp_path / "a", tmp_path / "b"
    run(torchrun_cmd(2, "--config", DEBUG, "--mode", "pretrain", f"output_dir={a}", *args, *COMMON,
                     "train.sample_every=12", f"tokenizer.ckpt={assets['dcae']}"))
    assert (a / "samples" / "step_0000012.png").exists()  # the preview: samples at sample.height x width, decoded

    interrupt_after_checkpoint(torchrun_cmd(2, "--config", DEBUG, "--mode", "pretrain", f"output_dir={b}", *args,
                                            *COMMON), b)
    run(torchrun_cmd(2, "--config", DEBUG, "--mode", "pretrain", f"output_dir={b}", *args, *COMMON))
    ma, mb = read_metrics(a), read_metrics(b)
    assert sorted(ma) == sorted(mb) == list(range(1, 13))
    for s in range(1, 13):
        assert (ma[s]["loss"], ma[s]["mse"], ma[s]["dir"]) == (mb[s]["loss"], mb[s]["mse"], mb[s]["dir"]), s
    assert len({ma[s]["loss"] for s in ma}) == 12
    assert ma[12]["mse"] < ma[1]["mse"]  # it learns (a fresh model predicts 0: mse ~ E|eps - x0|^2 at step 1)
    assert "repa" not in ma[1]  # no encoder configured: no REPA term


def test_one_process_takes_two_packs_per_step(data, tmp_path):
    """train.batch_size=2 on one process: two packs per step, one per micro-batch (the official accumulation); the
    logged step-1 loss is the mean of the family loss on both, restated outside the engine."""
    import torch

    import train
    from core.seeding import step_seed
    from engine.config import load_config
    from models import build_model
    from models.family import TrainContext
    from models.nit.family import family_loss, pack_batches, pack_dataset, param_groups
    args, packs, _ = data
    out = tmp_path / "one"
    assert train.main(["--config", DEBUG, "--mode", "pretrain", f"output_dir={out}", *args, *COMMON,
                       "train.steps=1"]) == 0
    cfg = load_config(DEBUG, [*args, *COMMON])
    torch.manual_seed(0)
    model, _ = build_model(cfg)
    param_groups(model, cfg)
    micro = pack_batches(pack_dataset(cfg), cfg, 0, 0, 1)
    assert len(micro) == 2 and not torch.equal(micro[0]["indices"], micro[1]["indices"][:len(micro[0]["indices"])])
    losses = []
    for mi, batch in enumerate(micro):
        torch.manual_seed(step_seed(0, 0, 0, mi))
        losses.append(family_loss(model, batch, TrainContext(cfg=cfg))[1]["loss"])
    assert read_metrics(out)[1]["loss"] == pytest.approx(sum(losses) / 2, rel=1e-6)
